//! Parsing Amazon's tab-separated order reports into [`crate::store::OrderRow`]s.
//!
//! Reads the New Orders (`_GET_FLAT_FILE_ORDERS_DATA_`), Unshipped Orders and similar flat
//! files (header names as in `reference/feed-format.md` §8.2). Unknown columns are ignored
//! (those that look like misspellings of read ones are named for the summary,
//! [`HeaderNotes`]); a CSV or XML file is named as such at its header; a bad line fails the
//! whole import with an error naming the line and the column, its values quoted as the
//! reports quote them ([`crate::problem::quoted`]). (Lines
//! are parsed one by one here; that two lines name the same order item, or give one order
//! different order-level values, is found by the store's import, `ImportSeen::repeat`.)
//!
//! This module does not touch the store: [`crate::store::Store::import_orders`] writes the
//! rows, and checks them against what is already stored.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use chrono::NaiveDate;

use crate::model::{
    AmazonOrderId, Amount, AmountError, Component, Currency, FulfillmentChannel, OrderItemCode,
    PURCHASE_DATE_FORMS, PriceComponent, PromotionComponent, SellerId, format_minor,
    parse_purchase_date,
};
use crate::problem::quoted;
use crate::store::{OrderRow, RowSource, Rows};

/// Why an order report could not be read. Names the 1-based line and, when the problem is
/// in one field, the column by its header name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportError {
    /// 1-based line of the file (the header is line 1).
    pub line: u32,
    /// Header name of the column, when the problem is in one field.
    pub column: Option<String>,
    /// What is wrong and, where it helps, how to fix it.
    pub detail: String,
}

impl fmt::Display for ImportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.column {
            Some(column) => write!(f, "line {}, column {column}: {}", self.line, self.detail),
            None => write!(f, "line {}: {}", self.line, self.detail),
        }
    }
}

impl std::error::Error for ImportError {}

/// The price columns and the component each one fills, in report order. Promotion
/// discounts are stored as the (absolute) discount the buyer received.
pub const PRICE_COLUMNS: &[(&str, Component)] = &[
    ("item-price", Component::Price(PriceComponent::Principal)),
    ("item-tax", Component::Price(PriceComponent::Tax)),
    ("shipping-price", Component::Price(PriceComponent::Shipping)),
    (
        "shipping-tax",
        Component::Price(PriceComponent::ShippingTax),
    ),
    (
        "gift-wrap-price",
        Component::Price(PriceComponent::GiftWrap),
    ),
    (
        "gift-wrap-tax",
        Component::Price(PriceComponent::GiftWrapTax),
    ),
    (
        "item-promotion-discount",
        Component::Promotion(PromotionComponent::Principal),
    ),
    (
        "ship-promotion-discount",
        Component::Promotion(PromotionComponent::Shipping),
    ),
];

/// The report column a charged component comes from (for messages), or the component name
/// when no report column fills it.
pub fn column_for(component: Component) -> &'static str {
    PRICE_COLUMNS
        .iter()
        .find(|(_, c)| *c == component)
        .map_or(component.name(), |(column, _)| column)
}

/// An order report read line by line: [`OrderReport::new`] reads the header, then each
/// item of the iterator is one order line, parsed. Memory stays flat whatever the size of
/// the file. Handles CRLF, a UTF-8 BOM and empty lines. Amounts are exact ([`Amount`]):
/// more fraction digits than the currency allows is an error, never rounded. A report
/// without price columns (Unshipped Orders) gives rows with empty `charged`.
///
/// The iterator yields the first problem found, naming the line and column (a field that
/// is not a valid order id, item code, quantity, currency or amount, a line with more
/// fields than the header, a field adjustd reads that is not UTF-8, a report with no data
/// lines), then ends. Columns adjustd ignores may hold any bytes.
pub struct OrderReport<R> {
    reader: R,
    columns: Columns,
    /// The header's column names (lower case, trimmed).
    header: Vec<String>,
    header_line: u32,
    /// The 1-based number of the line in `buf`.
    line: u32,
    buf: Vec<u8>,
    rows: u64,
    done: bool,
}

impl<R: BufRead> OrderReport<R> {
    /// Reads the header line (the first line that is not blank) and finds the columns.
    ///
    /// # Errors
    /// An empty report, a header without a required column or with a column it reads named
    /// twice, bytes that cannot be read.
    pub fn new(reader: R) -> Result<OrderReport<R>, ImportError> {
        let mut report = OrderReport {
            reader,
            columns: Columns::default(),
            header: Vec::new(),
            header_line: 0,
            line: 0,
            buf: Vec::new(),
            rows: 0,
            done: false,
        };
        let Some(header) = report.next_line()? else {
            return Err(ImportError {
                line: 1,
                column: None,
                detail: "the order report is empty (expected a header line)".into(),
            });
        };
        check_tab_separated(&report.buf[header.clone()], report.line)?;
        // Lossy: a name that is not UTF-8 is no column adjustd reads.
        report.header = String::from_utf8_lossy(&report.buf[header])
            .split('\t')
            .map(|h| h.trim().to_ascii_lowercase())
            .collect();
        report.header_line = report.line;
        report.columns = find_columns(&report.header, report.line)?;
        Ok(report)
    }

    /// What the header says about the columns this import ignores.
    pub fn notes(&self) -> HeaderNotes {
        HeaderNotes::of(&self.header)
    }

    /// Reads the next line that is not blank into `buf` and gives the range of its text
    /// (without the line end, and without the BOM on line 1); `None` at the end of the file.
    fn next_line(&mut self) -> Result<Option<Range<usize>>, ImportError> {
        loop {
            self.buf.clear();
            self.line = self.line.saturating_add(1);
            let read = self
                .reader
                .read_until(b'\n', &mut self.buf)
                .map_err(|e| ImportError {
                    line: self.line,
                    column: None,
                    detail: format!("cannot read the order report: {e}"),
                })?;
            if read == 0 {
                return Ok(None);
            }
            let mut end = self.buf.len();
            for ending in [b'\n', b'\r'] {
                if end > 0 && self.buf[end - 1] == ending {
                    end -= 1;
                }
            }
            let start = if self.line == 1 && self.buf[..end].starts_with(b"\xef\xbb\xbf") {
                3
            } else {
                0
            };
            if !self.buf[start..end].iter().all(u8::is_ascii_whitespace) {
                return Ok(Some(start..end));
            }
        }
    }

    /// The tab-separated fields of `range` in `buf`. A field of a column adjustd reads must
    /// be UTF-8; one of a column it ignores (a buyer's name in a report saved as
    /// Windows-1252, say) is passed over as empty.
    fn fields(&self, range: Range<usize>) -> Result<Vec<&str>, ImportError> {
        self.buf[range]
            .split(|byte| *byte == b'\t')
            .enumerate()
            .map(|(i, raw)| {
                let name = self.header.get(i).map_or("", String::as_str);
                match std::str::from_utf8(raw) {
                    Ok(text) => Ok(text),
                    Err(_) if !is_read(name) => Ok(""),
                    Err(_) => Err(ImportError {
                        line: self.line,
                        column: Some(name.to_owned()),
                        detail: "the field is not UTF-8; save the report as UTF-8 and import it \
                                 again"
                            .into(),
                    }),
                }
            })
            .collect()
    }
}

impl<R: BufRead> Iterator for OrderReport<R> {
    type Item = Result<OrderRow, ImportError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let row = match self.next_line() {
            Ok(Some(range)) => self
                .fields(range)
                .and_then(|fields| parse_row(&self.columns, self.header.len(), self.line, &fields)),
            Ok(None) => {
                self.done = true;
                return (self.rows == 0).then(|| {
                    Err(ImportError {
                        line: self.header_line,
                        column: None,
                        detail: "the order report has a header but no order lines".into(),
                    })
                });
            }
            Err(e) => Err(e),
        };
        match &row {
            Ok(_) => self.rows += 1,
            Err(_) => self.done = true,
        }
        Some(row)
    }
}

/// Reads a whole order report from `reader` (UTF-8, optional BOM) into memory; see
/// [`OrderReport`] for the rules. `orders import` streams instead ([`ReportFile`]).
///
/// # Errors
/// The first problem, as [`OrderReport`] words it.
pub fn read_order_report(reader: impl Read) -> Result<Vec<OrderRow>, ImportError> {
    OrderReport::new(BufReader::new(reader))?.collect()
}

/// Parses the text of a tab-separated order report: a header line, then one line per order
/// item (several lines for one order are its items). See [`OrderReport`].
///
/// # Errors
/// The first problem, as [`OrderReport`] words it.
pub fn parse_order_report(text: &str) -> Result<Vec<OrderRow>, ImportError> {
    OrderReport::new(text.as_bytes())?.collect()
}

/// An order report file for [`crate::store::Store::import_orders`]: read again from its
/// first line each time its rows are asked for, never held in memory. While its rows are
/// read it notes the orders whose purchase-date is unlikely ([`unlikely_purchase_date`]),
/// for the import's warnings ([`ReportFile::unlikely_purchase_dates`]).
#[derive(Debug)]
pub struct ReportFile {
    path: PathBuf,
    unlikely: Mutex<UnlikelyDates>,
}

/// The orders with an unlikely purchase-date met in the last reading of a [`ReportFile`].
#[derive(Debug, Default)]
struct UnlikelyDates {
    /// Each order once (its lines give it one purchase-date, or the import fails).
    orders: HashSet<AmazonOrderId>,
    /// The first line of each, in report order.
    found: Vec<UnlikelyPurchaseDate>,
}

impl ReportFile {
    /// The report at `path` (opened when its rows are read).
    pub fn new(path: &Path) -> ReportFile {
        ReportFile {
            path: path.to_owned(),
            unlikely: Mutex::default(),
        }
    }

    /// The report read up to its header.
    fn open(&self) -> Result<OrderReport<BufReader<File>>, ImportError> {
        let file = File::open(&self.path).map_err(|e| ImportError {
            line: 0,
            column: None,
            detail: format!("cannot open the order report: {e}"),
        })?;
        OrderReport::new(BufReader::with_capacity(64 * 1024, file))
    }

    /// What the report's header says about the columns an import ignores.
    ///
    /// # Errors
    /// The report cannot be opened, or its header is bad.
    pub fn header(&self) -> Result<HeaderNotes, ImportError> {
        Ok(self.open()?.notes())
    }

    /// The orders whose purchase-date the last reading of the rows found unlikely
    /// ([`unlikely_purchase_date`], judged by the UTC day the reading began), each with
    /// its first line, in report order.
    pub fn unlikely_purchase_dates(&self) -> Vec<UnlikelyPurchaseDate> {
        self.unlikely
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .found
            .clone()
    }

    fn note_purchase_date(&self, row: &OrderRow, today: NaiveDate) {
        let Some(value) = &row.purchase_date else {
            return;
        };
        let Some(when) = unlikely_purchase_date(value, today) else {
            return;
        };
        let mut unlikely = self.unlikely.lock().unwrap_or_else(PoisonError::into_inner);
        if unlikely.orders.insert(row.amazon_order_id.clone()) {
            unlikely.found.push(UnlikelyPurchaseDate {
                line: row.line,
                order: row.amazon_order_id.clone(),
                value: value.clone(),
                when,
            });
        }
    }
}

impl RowSource for ReportFile {
    fn rows(&self) -> Result<Rows<'_>, ImportError> {
        // A store that runs its transaction again reads the rows again: note them afresh.
        *self.unlikely.lock().unwrap_or_else(PoisonError::into_inner) = UnlikelyDates::default();
        let today = chrono::Utc::now().date_naive();
        Ok(Box::new(self.open()?.inspect(move |row| {
            if let Ok(row) = row {
                self.note_purchase_date(row, today);
            }
        })))
    }
}

/// Why a purchase-date is unlikely ([`unlikely_purchase_date`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unlikely {
    /// After tomorrow (UTC): no refund on the order is outside the refund window until
    /// long after it was really bought (a typo in the year, say).
    Future,
    /// Before [`EARLIEST_LIKELY_PURCHASE`]: every refund on the order is outside the window.
    Past,
}

/// An order of a report whose purchase-date is unlikely ([`ReportFile::unlikely_purchase_dates`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnlikelyPurchaseDate {
    /// The first line of the order that gives it (1-based, the header is line 1).
    pub line: u32,
    /// The order.
    pub order: AmazonOrderId,
    /// The purchase-date as written.
    pub value: String,
    /// Too late or too early.
    pub when: Unlikely,
}

/// The earliest purchase day an import takes without a warning (Amazon opened in 1995).
pub const EARLIEST_LIKELY_PURCHASE: NaiveDate = match NaiveDate::from_ymd_opt(1995, 1, 1) {
    Some(day) => day,
    None => panic!("1995-01-01 is a date"),
};

/// Whether the purchase-date `raw` (one [`parse_purchase_date`] accepts) is unlikely, on
/// UTC day `today`: its day ([`parse_purchase_date`]'s, the one the refund window counts
/// from) after tomorrow, or before [`EARLIEST_LIKELY_PURCHASE`]. The refund window cannot
/// work as meant for such an order; the import still takes it, with a warning.
pub fn unlikely_purchase_date(raw: &str, today: NaiveDate) -> Option<Unlikely> {
    let day = parse_purchase_date(raw)?;
    if today.succ_opt().is_some_and(|tomorrow| day > tomorrow) {
        Some(Unlikely::Future)
    } else if day < EARLIEST_LIKELY_PURCHASE {
        Some(Unlikely::Past)
    } else {
        None
    }
}

/// Column indexes of the fields we read; `None` when the report lacks the column.
#[derive(Default)]
struct Columns {
    order_id: (usize, &'static str),
    item_code: (usize, &'static str),
    merchant_order_id: Option<usize>,
    merchant_item_id: Option<usize>,
    purchase_date: Option<usize>,
    sku: usize,
    quantity: (usize, &'static str),
    quantity_shipped: Option<usize>,
    currency: Option<usize>,
    channel: Option<usize>,
    prices: Vec<(usize, &'static str, Component)>,
    /// The last of the columns that decide money (ids, quantity, prices, currency, channel),
    /// with its name: a line that ends before it was cut short (its prices would read as
    /// 0.00, an AFN order as MFN). Informational columns may be missing at the end.
    last_used: (usize, &'static str),
}

/// The columns an import reads besides [`PRICE_COLUMNS`]; every other column is ignored.
const READ_COLUMNS: &[&str] = &[
    "order-id",
    "amazon-order-id",
    "order-item-id",
    "merchant-order-id",
    "merchant-order-item-id",
    "purchase-date",
    "sku",
    "quantity-purchased",
    "quantity",
    "quantity-shipped",
    "currency",
    "fulfillment-channel",
];

/// True for a column an import reads ([`READ_COLUMNS`], [`PRICE_COLUMNS`]).
fn is_read(name: &str) -> bool {
    READ_COLUMNS.contains(&name) || PRICE_COLUMNS.iter().any(|(price, _)| *price == name)
}

/// The hint for a value wrapped in double quotes, as a spreadsheet's export writes fields
/// (`"171-1234567-1234567"`): adjustd reads the quotes as part of the value. Empty for any
/// other value.
fn quote_hint(raw: &str) -> &'static str {
    if raw.len() >= 2 && raw.starts_with('"') && raw.ends_with('"') {
        "; the field is wrapped in double quotes: save the report as plain tab-delimited \
         text without quotes (as Amazon delivers it) and import it again"
    } else {
        ""
    }
}

/// Refuses a header line (`text`, line `line`) that shows the file is no tab-separated
/// order report: an XML document (an adjustment feed given to `orders import`), or a line
/// without a tab but with commas or semicolons (a report saved as CSV). Any other header
/// is left to [`find_columns`], which names a missing column.
fn check_tab_separated(text: &[u8], line: u32) -> Result<(), ImportError> {
    let refuse = |detail: &str| ImportError {
        line,
        column: None,
        detail: detail.to_owned(),
    };
    if text.trim_ascii_start().starts_with(b"<") {
        return Err(refuse(
            "the file is XML (an adjustment feed?), not an order report: `orders import` reads \
             Amazon's tab-separated order reports; adjustment feeds go to `adjustd process` or \
             the daemon's inbox",
        ));
    }
    if !text.contains(&b'\t') {
        for (separator, name) in [(b',', "comma"), (b';', "semicolon")] {
            if text.contains(&separator) {
                return Err(refuse(&format!(
                    "the header has no tab but has {name}s: order reports are tab-separated \
                     and this one looks {name}-separated (saved as CSV?); save it as \
                     tab-delimited text, or use the report as Amazon delivers it"
                )));
            }
        }
    }
    Ok(())
}

/// How a header names a column that adjustd reads, written another way: lower case (the
/// header already is), `_`, space and `.` as `-`.
fn spelled_out(name: &str) -> String {
    name.chars()
        .map(|c| if matches!(c, '_' | ' ' | '.') { '-' } else { c })
        .collect()
}

/// The read column ([`is_read`]) that `name`, a column adjustd ignores, looks like a
/// misspelling of: the same once `_`, space and `.` are read as `-`, or one edit away (two
/// for names longer than 6 characters). Amazon's own columns that adjustd does not read
/// (buyer-name, ship-city, item-promotion-id, quantity-to-ship, ...) are further away from
/// every read column, so only a typo is named.
fn lookalike(name: &str) -> Option<&'static str> {
    if name.is_empty() || is_read(name) {
        return None;
    }
    let name = spelled_out(name);
    READ_COLUMNS
        .iter()
        .copied()
        .chain(PRICE_COLUMNS.iter().map(|(column, _)| *column))
        .map(|column| (strsim::levenshtein(&name, column), column))
        .filter(|(distance, column)| *distance <= if column.len() > 6 { 2 } else { 1 })
        .min()
        .map(|(_, column)| column)
}

/// What the header of an order report says about the columns an import ignores, for the
/// import's summary ([`ReportFile::header`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HeaderNotes {
    /// Ignored columns that look like misspellings of a column adjustd reads, each with
    /// that column (`item_price`, `item-price`), in header order. Amazon's many other
    /// columns that adjustd does not read are not listed.
    pub lookalikes: Vec<(String, &'static str)>,
    /// True when the header has at least one of the amount columns ([`PRICE_COLUMNS`]).
    pub amount_columns: bool,
}

impl HeaderNotes {
    fn of(header: &[String]) -> HeaderNotes {
        HeaderNotes {
            lookalikes: header
                .iter()
                .filter_map(|name| lookalike(name).map(|column| (name.clone(), column)))
                .collect(),
            amount_columns: header
                .iter()
                .any(|name| PRICE_COLUMNS.iter().any(|(price, _)| price == name)),
        }
    }
}

/// Why a header may lack the column `what` ("order-id (or amazon-order-id)"): names wrapped
/// in double quotes (a spreadsheet's export), or a name that looks like a misspelling of
/// that column ([`lookalike`]). Empty when neither.
fn header_hint(names: &[String], what: &str) -> String {
    let wanted = |column: &str| {
        what.split([' ', '(', ')'])
            .any(|word| !word.is_empty() && word == column)
    };
    if names.iter().any(|name| !quote_hint(name).is_empty()) {
        return " (its names are wrapped in double quotes: save the report as plain \
                tab-delimited text without quotes, as Amazon delivers it, and import it again)"
            .to_owned();
    }
    names
        .iter()
        .find(|name| lookalike(name).is_some_and(wanted))
        .map_or_else(String::new, |name| {
            format!(" (is {} meant?)", crate::problem::quoted(name))
        })
}

fn find_columns(names: &[String], line: u32) -> Result<Columns, ImportError> {
    let mut index: HashMap<&str, usize> = HashMap::new();
    for (i, name) in names.iter().enumerate() {
        // A column read twice could mean either value; an ignored one means nothing.
        if is_read(name) && index.insert(name.as_str(), i).is_some() {
            return Err(ImportError {
                line,
                column: Some(name.clone()),
                detail: "the header names this column twice".into(),
            });
        }
    }
    let find = |name: &str| index.get(name).copied();
    let either = |a: &'static str, b: &'static str| {
        find(a).map(|i| (i, a)).or_else(|| find(b).map(|i| (i, b)))
    };
    let missing = |what: &str| ImportError {
        line,
        column: None,
        detail: format!(
            "the header has no {what} column{}",
            header_hint(names, what)
        ),
    };
    let order_id = either("order-id", "amazon-order-id")
        .ok_or_else(|| missing("order-id (or amazon-order-id)"))?;
    let item_code = find("order-item-id")
        .map(|i| (i, "order-item-id"))
        .ok_or_else(|| ImportError {
            line,
            column: None,
            detail: format!(
                "the header has no order-item-id column{}",
                match header_hint(names, "order-item-id") {
                    hint if hint.is_empty() => " (the All Orders report lacks item codes; import \
                                                the New Orders or Unshipped Orders report instead)"
                        .to_owned(),
                    hint => hint,
                }
            ),
        })?;
    let sku = find("sku").ok_or_else(|| missing("sku"))?;
    let quantity = either("quantity-purchased", "quantity")
        .ok_or_else(|| missing("quantity-purchased (or quantity)"))?;
    let prices: Vec<(usize, &'static str, Component)> = PRICE_COLUMNS
        .iter()
        .filter_map(|(name, component)| find(name).map(|i| (i, *name, *component)))
        .collect();
    let named = |name: &'static str| find(name).map(|i| (i, name));
    let last_used = [order_id, item_code, (sku, "sku"), quantity]
        .into_iter()
        .chain(prices.iter().map(|(i, name, _)| (*i, *name)))
        .chain(
            ["currency", "fulfillment-channel"]
                .into_iter()
                .filter_map(named),
        )
        .max()
        .unwrap_or(order_id);
    Ok(Columns {
        order_id,
        item_code,
        merchant_order_id: find("merchant-order-id"),
        merchant_item_id: find("merchant-order-item-id"),
        purchase_date: find("purchase-date"),
        sku,
        quantity,
        quantity_shipped: find("quantity-shipped"),
        currency: find("currency"),
        channel: find("fulfillment-channel"),
        prices,
        last_used,
    })
}

fn parse_row(
    columns: &Columns,
    header_len: usize,
    line: u32,
    fields: &[&str],
) -> Result<OrderRow, ImportError> {
    if fields.len() > header_len {
        return Err(ImportError {
            line,
            column: None,
            detail: format!(
                "the line has {} tab-separated fields but the header has {header_len} \
                 (a tab inside a value?)",
                fields.len()
            ),
        });
    }
    // Trailing informational fields may be missing; see `Columns::last_used`.
    let (last, last_name) = columns.last_used;
    if fields.len() <= last {
        return Err(ImportError {
            line,
            column: Some(last_name.to_owned()),
            detail: format!(
                "the line has {} tab-separated fields but column {last_name} is field {} of \
                 the header: the line is cut short",
                fields.len(),
                last + 1
            ),
        });
    }
    let field = |i: usize| fields.get(i).map_or("", |f| f.trim());
    let err = |column: &str, detail: String| ImportError {
        line,
        column: Some(column.to_owned()),
        detail,
    };
    let optional = |i: Option<usize>| i.map(field).filter(|v| !v.is_empty());

    let (i, name) = columns.order_id;
    let raw = field(i);
    let amazon_order_id = AmazonOrderId::new(raw).ok_or_else(|| {
        err(
            name,
            format!("{} is not an Amazon order id (3-7-7 letters or digits, e.g. 171-1234567-1234567){}", quoted(raw), quote_hint(raw)),
        )
    })?;
    let (i, name) = columns.item_code;
    let raw = field(i);
    let item_code = OrderItemCode::new(raw).ok_or_else(|| {
        err(
            name,
            format!(
                "{} is not an order item code (14 or 15 digits){}",
                quoted(raw),
                quote_hint(raw)
            ),
        )
    })?;
    let seller_id = |i: Option<usize>, name: &str| -> Result<Option<SellerId>, ImportError> {
        optional(i)
            .map(|raw| {
                SellerId::new(raw).ok_or_else(|| {
                    err(
                        name,
                        format!(
                            "{} is longer than 50 characters{}",
                            quoted(raw),
                            quote_hint(raw)
                        ),
                    )
                })
            })
            .transpose()
    };
    let merchant_order_id = seller_id(columns.merchant_order_id, "merchant-order-id")?;
    let merchant_item_id = seller_id(columns.merchant_item_id, "merchant-order-item-id")?;
    let purchase_date = optional(columns.purchase_date)
        .map(|raw| {
            // Kept as written; checked with the parser the store reads it back with.
            parse_purchase_date(raw)
                .map(|_| raw.to_owned())
                .ok_or_else(|| {
                    err(
                        "purchase-date",
                        format!(
                            "{} is not a date like {PURCHASE_DATE_FORMS}{}",
                            quoted(raw),
                            quote_hint(raw)
                        ),
                    )
                })
        })
        .transpose()?;
    let sku = field(columns.sku);
    if sku.is_empty() {
        return Err(err("sku", "the SKU is empty".into()));
    }
    let (i, name) = columns.quantity;
    let quantity_ordered = match field(i).parse::<u32>() {
        Ok(q) if q > 0 => q,
        _ => {
            return Err(err(
                name,
                format!(
                    "{} is not a positive whole number of units{}",
                    quoted(field(i)),
                    quote_hint(field(i))
                ),
            ));
        }
    };
    let quantity_shipped = optional(columns.quantity_shipped)
        .map(|raw| {
            raw.parse::<u32>().map_err(|_| {
                err(
                    "quantity-shipped",
                    format!(
                        "{} is not a whole number of units{}",
                        quoted(raw),
                        quote_hint(raw)
                    ),
                )
            })
        })
        .transpose()?;
    if let Some(shipped) = quantity_shipped
        && shipped > quantity_ordered
    {
        return Err(err(
            "quantity-shipped",
            format!("{shipped} units shipped but only {quantity_ordered} ordered"),
        ));
    }
    let currency = optional(columns.currency)
        .map(|raw| {
            Currency::from_code(raw).ok_or_else(|| {
                err(
                    "currency",
                    format!(
                        "{} is not an ISO 4217 currency code (e.g. USD){}",
                        quoted(raw),
                        quote_hint(raw)
                    ),
                )
            })
        })
        .transpose()?;
    let channel = optional(columns.channel)
        .map(|raw| match raw.to_ascii_lowercase().as_str() {
            "afn" | "amazon" => Ok(FulfillmentChannel::Amazon),
            "mfn" | "merchant" => Ok(FulfillmentChannel::Merchant),
            _ => Err(err(
                "fulfillment-channel",
                format!(
                    "{} is not AFN, MFN, Amazon or Merchant{}",
                    quoted(raw),
                    quote_hint(raw)
                ),
            )),
        })
        .transpose()?;
    let mut charged = Vec::new();
    for (i, name, component) in &columns.prices {
        let raw = field(*i);
        if raw.is_empty() {
            continue;
        }
        let Some(currency) = currency else {
            return Err(err(
                name,
                "an amount is given but the line has no currency (add the currency column)".into(),
            ));
        };
        let too_precise = || {
            err(
                name,
                format!(
                    "{} has more fraction digits than {currency} allows ({}); amounts are \
                     never rounded",
                    quoted(raw),
                    currency.exponent()
                ),
            )
        };
        let amount = Amount::parse(raw).map_err(|e| match e {
            AmountError::Format => err(
                name,
                format!(
                    "{} is not a plain decimal number (digits, optional point; no \
                     thousands separators){}",
                    quoted(raw),
                    quote_hint(raw)
                ),
            ),
            AmountError::IntegerDigits => err(
                name,
                format!(
                    "{} has more than {} integer digits",
                    quoted(raw),
                    Amount::MAX_INTEGER_DIGITS
                ),
            ),
            AmountError::FractionDigits { .. } => too_precise(),
        })?;
        let minor = match amount.to_minor(currency) {
            Some(minor) => minor,
            None if amount.fraction_digits() > currency.exponent() => return Err(too_precise()),
            None => {
                return Err(err(
                    name,
                    format!(
                        "{} is too large: amounts are held in minor units of {currency} up \
                         to {}",
                        quoted(raw),
                        format_minor(i64::MAX, currency)
                    ),
                ));
            }
        };
        let minor = match component {
            // Discounts appear negative or positive depending on the report; the store
            // keeps the discount the buyer received.
            Component::Promotion(_) => minor
                .checked_abs()
                .ok_or_else(|| err(name, format!("{} is too large", quoted(raw))))?,
            Component::Price(_) if minor < 0 => {
                return Err(err(
                    name,
                    format!("{} is negative; a charge cannot be", quoted(raw)),
                ));
            }
            Component::Price(_) => minor,
        };
        charged.push((*component, minor));
    }
    Ok(OrderRow {
        line,
        amazon_order_id,
        merchant_order_id,
        item_code,
        merchant_item_id,
        purchase_date,
        sku: sku.to_owned(),
        quantity_ordered,
        quantity_shipped,
        currency,
        charged,
        channel,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NEW_ORDERS_HEADER: &str = "order-id\torder-item-id\tpurchase-date\tpayments-date\tsku\tproduct-name\tquantity-purchased\tcurrency\titem-price\titem-tax\tshipping-price\tshipping-tax\titem-promotion-discount\tship-promotion-discount\tfulfillment-channel";

    fn usd() -> Currency {
        Currency::from_code("USD").expect("USD")
    }

    fn error(text: &str) -> ImportError {
        parse_order_report(text).expect_err("the report must be rejected")
    }

    #[test]
    fn new_orders_report_with_bom_crlf_and_trailing_lines() {
        let text = format!(
            "\u{feff}{NEW_ORDERS_HEADER}\r\n\
             171-1234567-1234567\t12345678901234\t2026-11-01T10:00:00+00:00\t2026-11-01\tSKU-1\tMug\t2\tUSD\t20.00\t1.60\t4.99\t0.40\t-2.00\t0\tMFN\r\n\
             171-1234567-1234567\t12345678901235\t2026-11-01T10:00:00+00:00\t2026-11-01\tSKU-2\tCup\t1\tUSD\t5\t\t\t\t\t\tAmazon\r\n\
             \r\n\r\n"
        );
        let rows = parse_order_report(&text).expect("valid report");
        assert_eq!(rows.len(), 2);
        let first = &rows[0];
        assert_eq!(first.line, 2);
        assert_eq!(first.amazon_order_id.as_str(), "171-1234567-1234567");
        assert_eq!(first.item_code.as_str(), "12345678901234");
        assert_eq!(first.sku, "SKU-1");
        assert_eq!(first.quantity_ordered, 2);
        assert_eq!(first.quantity_shipped, None);
        assert_eq!(first.currency, Some(usd()));
        assert_eq!(first.channel, Some(FulfillmentChannel::Merchant));
        assert_eq!(
            first.purchase_date.as_deref(),
            Some("2026-11-01T10:00:00+00:00")
        );
        assert_eq!(
            first.charged,
            vec![
                (Component::Price(PriceComponent::Principal), 2000),
                (Component::Price(PriceComponent::Tax), 160),
                (Component::Price(PriceComponent::Shipping), 499),
                (Component::Price(PriceComponent::ShippingTax), 40),
                (Component::Promotion(PromotionComponent::Principal), 200),
                (Component::Promotion(PromotionComponent::Shipping), 0),
            ]
        );
        let second = &rows[1];
        assert_eq!(second.line, 3);
        assert_eq!(second.channel, Some(FulfillmentChannel::Amazon));
        assert_eq!(
            second.charged,
            vec![(Component::Price(PriceComponent::Principal), 500)]
        );
    }

    #[test]
    fn unshipped_report_has_quantities_only() {
        let text = "order-id\torder-item-id\tpurchase-date\tsku\tquantity-purchased\tquantity-shipped\tquantity-to-ship\tis-prime\n\
                    171-1234567-1234567\t12345678901234\t2026-11-01\tSKU-1\t3\t1\t2\tfalse\n";
        let rows = parse_order_report(text).expect("valid");
        assert_eq!(rows[0].quantity_ordered, 3);
        assert_eq!(rows[0].quantity_shipped, Some(1));
        assert_eq!(rows[0].currency, None);
        assert!(rows[0].charged.is_empty());
        assert_eq!(rows[0].channel, None);
    }

    #[test]
    fn all_orders_style_names_and_seller_ids() {
        let text = "amazon-order-id\tmerchant-order-id\torder-item-id\tmerchant-order-item-id\tsku\tquantity\tcurrency\titem-price\tfulfillment-channel\n\
                    171-1234567-1234567\tMO-1\t12345678901234\tMI-1\tS\t1\tJPY\t1200\tMerchant\n";
        let rows = parse_order_report(text).expect("valid");
        assert_eq!(
            rows[0].merchant_order_id.as_ref().map(SellerId::as_str),
            Some("MO-1")
        );
        assert_eq!(
            rows[0].merchant_item_id.as_ref().map(SellerId::as_str),
            Some("MI-1")
        );
        assert_eq!(
            rows[0].charged,
            vec![(Component::Price(PriceComponent::Principal), 1200)]
        );
    }

    #[test]
    fn bad_fields_name_line_and_column() {
        let row = |fields: &str| format!("{NEW_ORDERS_HEADER}\n{fields}\n");
        let good =
            "171-1234567-1234567\t12345678901234\t2026-11-01\t\tS\tP\t1\tUSD\t10.00\t\t\t\t\t\tMFN";
        assert!(parse_order_report(&row(good)).is_ok());
        let cases: &[(&str, &str, &str)] = &[
            (
                "171-1234567-1234567\t12345678901234\t2026-11-01\t\tS\tP\t1\tUSD\t10.005\t\t\t\t\t\tMFN",
                "item-price",
                "more fraction digits than USD allows (2)",
            ),
            (
                "171-1234567-1234567\t12345678901234\t2026-11-01\t\tS\tP\t1\tUSD\t1.0000000000000000000000000001\t\t\t\t\t\tMFN",
                "item-price",
                "more fraction digits than USD allows (2)",
            ),
            (
                "171-1234567-1234567\t12345678901234\t2026-11-01\t\tS\tP\t1\tUSD\t123456789012345678901\t\t\t\t\t\tMFN",
                "item-price",
                "more than 20 integer digits",
            ),
            (
                "171-1234567-1234567\t12345678901234\t2026-11-01\t\tS\tP\t1\tUSD\t99999999999999999999\t\t\t\t\t\tMFN",
                "item-price",
                "too large: amounts are held in minor units of USD up to 92233720368547758.07",
            ),
            (
                "171-1234567-1234567\t12345678901234\t2026-11-01\t\tS\tP\t1\tUSD\t1,000.00\t\t\t\t\t\tMFN",
                "item-price",
                "not a plain decimal number",
            ),
            (
                "171-1234567-1234567\t12345678901234\t2026-11-01\t\tS\tP\t1\tUSD\t10.00\t-1.00\t\t\t\t\tMFN",
                "item-tax",
                "negative",
            ),
            (
                "1711234567-1234567\t12345678901234\t2026-11-01\t\tS\tP\t1\tUSD\t10.00\t\t\t\t\t\tMFN",
                "order-id",
                "not an Amazon order id",
            ),
            (
                "171-1234567-1234567\t1234567890123\t2026-11-01\t\tS\tP\t1\tUSD\t10.00\t\t\t\t\t\tMFN",
                "order-item-id",
                "14 or 15 digits",
            ),
            (
                "171-1234567-1234567\t12345678901234\t2026-11-01\t\tS\tP\t0\tUSD\t10.00\t\t\t\t\t\tMFN",
                "quantity-purchased",
                "positive whole number",
            ),
            (
                "171-1234567-1234567\t12345678901234\t2026-11-01\t\tS\tP\t1\tUSX\t10.00\t\t\t\t\t\tMFN",
                "currency",
                "ISO 4217",
            ),
            (
                "171-1234567-1234567\t12345678901234\t2026-11-01\t\tS\tP\t1\t\t10.00\t\t\t\t\t\tMFN",
                "item-price",
                "no currency",
            ),
            (
                "171-1234567-1234567\t12345678901234\t2026-11-01\t\tS\tP\t1\tUSD\t10.00\t\t\t\t\t\tFBA",
                "fulfillment-channel",
                "not AFN, MFN",
            ),
            (
                "171-1234567-1234567\t12345678901234\t2026-11-01\t\t\tP\t1\tUSD\t10.00\t\t\t\t\t\tMFN",
                "sku",
                "empty",
            ),
            (
                "171-1234567-1234567\t12345678901234\tyesterday\t\tS\tP\t1\tUSD\t10.00\t\t\t\t\t\tMFN",
                "purchase-date",
                "not a date",
            ),
            (
                "171-1234567-1234567\t12345678901234\t2026-13-01\t\tS\tP\t1\tUSD\t10.00\t\t\t\t\t\tMFN",
                "purchase-date",
                "not a date",
            ),
            (
                "171-1234567-1234567\t12345678901234\t2026-02-30\t\tS\tP\t1\tUSD\t10.00\t\t\t\t\t\tMFN",
                "purchase-date",
                "not a date",
            ),
            (
                "171-1234567-1234567\t12345678901234\t2026-11-01\t\tS\tP\t1\tUSD",
                "fulfillment-channel",
                "cut short",
            ),
        ];
        for (fields, column, words) in cases {
            // The bad line is the third one; an earlier good line must not be imported.
            let text = format!("{NEW_ORDERS_HEADER}\n{good}\n{fields}\n");
            let e = error(&text);
            assert_eq!(e.line, 3, "{fields}: {e}");
            assert_eq!(e.column.as_deref(), Some(*column), "{fields}: {e}");
            assert!(e.detail.contains(words), "{fields}: {e}");
            assert!(
                e.to_string()
                    .starts_with(&format!("line 3, column {column}: ")),
                "{e}"
            );
        }
    }

    #[test]
    fn structural_errors() {
        let e = error("order-id\tsku\tquantity-purchased\n171-1234567-1234567\tS\t1\n");
        assert_eq!((e.line, e.column.as_deref()), (1, None));
        assert!(e.detail.contains("order-item-id"), "{e}");

        let e = error("order-id\torder-item-id\tsku\tsku\tquantity\n");
        assert_eq!((e.line, e.column.as_deref()), (1, Some("sku")));
        // An ignored column named twice is still ignored.
        let rows = parse_order_report(
            "order-id\tnotes\torder-item-id\tsku\tquantity\tnotes\n\
             171-1234567-1234567\ta\t12345678901234\tS\t1\tb\n",
        )
        .expect("valid");
        assert_eq!(rows.len(), 1);

        let e = error("order-id\torder-item-id\tsku\tquantity\n");
        assert!(e.detail.contains("no order lines"), "{e}");

        let e = error("");
        assert_eq!(e.line, 1);

        let e = error(
            "order-id\torder-item-id\tsku\tquantity\n\
             171-1234567-1234567\t12345678901234\tS\t1\textra\n",
        );
        assert_eq!((e.line, e.column.as_deref()), (2, None));
        assert!(e.detail.contains("5 tab-separated fields"), "{e}");

        let e = read_order_report(&b"order-id\torder-item-id\tsku\tquantity\n\xff\n"[..])
            .expect_err("not UTF-8");
        assert_eq!((e.line, e.column.as_deref()), (2, Some("order-id")));
        assert!(e.detail.contains("not UTF-8"), "{e}");
        // A column adjustd ignores may hold other bytes (a buyer's name in Windows-1252).
        let rows = read_order_report(
            &b"order-id\tbuyer-name\torder-item-id\tsku\tquantity\n\
               171-1234567-1234567\tJos\xe9\t12345678901234\tS\t1\n"[..],
        )
        .expect("valid");
        assert_eq!(rows.len(), 1);
        // A header name that is not UTF-8 is no column adjustd reads.
        let e = read_order_report(&b"\n\norder-id\xff\n"[..]).expect_err("no order-id");
        assert_eq!(e.line, 3);
        assert!(e.detail.contains("no order-id"), "{e}");
    }

    /// A report saved as CSV, or an XML file, is named as such at its header, not as a
    /// header without an order-id column (which it has, or is not a header at all).
    #[test]
    fn csv_and_xml_are_told_apart_from_a_missing_column() {
        let csv = NEW_ORDERS_HEADER.replace('\t', ",");
        for (text, words) in [
            (format!("{csv}\n1,2\n"), "looks comma-separated"),
            (
                format!("{}\n", NEW_ORDERS_HEADER.replace('\t', ";")),
                "looks semicolon-separated",
            ),
            (
                "\u{feff}<?xml version=\"1.0\"?>\n<AmazonEnvelope/>\n".to_owned(),
                "the file is XML (an adjustment feed?)",
            ),
            ("  <AmazonEnvelope>\t\n".to_owned(), "adjustd process"),
        ] {
            let e = error(&text);
            assert_eq!((e.line, e.column.as_deref()), (1, None), "{e}");
            assert!(e.detail.contains(words), "{e}");
            assert!(!e.detail.contains("no order-id"), "{e}");
        }
        // A tab-separated header with commas in a name, or a header of one column without
        // commas, is a header: a missing column is named as before.
        let e = error("order-id\tsku,x\tquantity\n");
        assert!(e.detail.contains("no order-item-id column"), "{e}");
        let e = error("orderid\n");
        assert!(
            e.detail.contains("no order-id (or amazon-order-id) column"),
            "{e}"
        );
    }

    #[test]
    fn a_missing_required_column_names_its_lookalike_or_the_quotes() {
        let e = error("order_id\torder-item-id\tsku\tquantity-purchased\tcurrency\n");
        assert!(
            e.detail
                .ends_with("no order-id (or amazon-order-id) column (is \"order_id\" meant?)"),
            "{e}"
        );
        let e = error("order-id\torder-itemid\tsku\tquantity\n");
        assert!(
            e.detail
                .ends_with("no order-item-id column (is \"order-itemid\" meant?)"),
            "{e}"
        );
        let e = error("\"order-id\"\t\"order-item-id\"\t\"sku\"\t\"quantity\"\n");
        assert!(e.detail.contains("wrapped in double quotes"), "{e}");
        // Nothing like it: the plain words, and the All Orders hint for the item code.
        let e = error("order-id\tsku\tquantity\n");
        assert!(
            e.detail.contains("the All Orders report lacks item codes"),
            "{e}"
        );
    }

    /// Values are quoted as reports quote them (invisible characters named), never with
    /// Rust's `{:?}`; a field wrapped in double quotes (a spreadsheet's export) gets a hint.
    #[test]
    fn values_are_quoted_as_reports_quote_them() {
        let header = "order-id\torder-item-id\tsku\tquantity\tcurrency\titem-price\n";
        let e = error(&format!(
            "{header}\u{200b}271-1111111-1111111\t12345678901234\tS\t1\tUSD\t1.00\n"
        ));
        assert_eq!(
            e.detail,
            "\"[U+200B ZERO WIDTH SPACE]271-1111111-1111111\" is not an Amazon order id (3-7-7 \
             letters or digits, e.g. 171-1234567-1234567)"
        );
        for (line, column) in [
            (
                "\"271-1111111-1111111\"\t12345678901234\tS\t1\tUSD\t1.00",
                "order-id",
            ),
            (
                "271-1111111-1111111\t12345678901234\tS\t1\tUSD\t\"1.00\"",
                "item-price",
            ),
            (
                "271-1111111-1111111\t12345678901234\tS\t\"1\"\tUSD\t1.00",
                "quantity",
            ),
        ] {
            let e = error(&format!("{header}{line}\n"));
            assert_eq!(e.column.as_deref(), Some(column), "{e}");
            assert!(e.detail.starts_with("\"\""), "{e}");
            assert!(!e.detail.contains('\\'), "no Rust escapes: {e}");
            assert!(
                e.detail.contains(
                    "wrapped in double quotes: save the report as plain \
                                   tab-delimited text without quotes"
                ),
                "{e}"
            );
        }
        let e = error(&format!(
            "{header}271-1111111-1111111\t12345678901234\tS\t1\tUSD\t1,00\n"
        ));
        assert!(
            e.detail.starts_with("\"1,00\" is not a plain decimal"),
            "{e}"
        );
        assert!(!e.detail.contains("double quotes"), "{e}");
    }

    /// Only ignored columns that look like misspellings of read ones are named: none of
    /// Amazon's own columns that adjustd does not read.
    #[test]
    fn header_notes_name_misspelt_columns_only() {
        let notes = |header: &str| {
            OrderReport::new(format!("{header}\n").as_bytes())
                .expect("header")
                .notes()
        };
        let amazon = [
            NEW_ORDERS_HEADER,
            "order-id\torder-item-id\tpurchase-date\tpayments-date\tbuyer-email\tbuyer-name\t\
             buyer-phone-number\tsku\tproduct-name\tquantity-purchased\tcurrency\titem-price\t\
             item-tax\tshipping-price\tshipping-tax\tship-service-level\trecipient-name\t\
             ship-address-1\tship-address-2\tship-address-3\tship-city\tship-state\t\
             ship-postal-code\tship-country\tship-phone-number\tbill-address-1\tbill-city\t\
             bill-state\tbill-postal-code\tbill-country\titem-promotion-discount\t\
             item-promotion-id\tship-promotion-discount\tship-promotion-id\t\
             delivery-start-date\tdelivery-end-date\tdelivery-time-zone\t\
             delivery-instructions\tsales-channel\tgift-wrap-type\tgift-message-text\t\
             is-business-order\tpurchase-order-number\tprice-designation\tis-prime",
        ];
        for header in amazon {
            let notes = notes(header);
            assert_eq!(notes.lookalikes, vec![], "{header}");
            assert!(notes.amount_columns);
        }
        let unshipped = notes(
            "order-id\torder-item-id\tpurchase-date\tpayments-date\treporting-date\t\
             promise-date\tdays-past-promise\tbuyer-email\tbuyer-name\tbuyer-phone-number\t\
             sku\tproduct-name\tquantity-purchased\tquantity-shipped\tquantity-to-ship\t\
             ship-service-level\trecipient-name\tship-city\tis-business-order\t\
             purchase-order-number\tprice-designation\tis-prime\tis-iba\t\
             verge-of-cancellation\tverge-of-latershipment",
        );
        assert_eq!(unshipped, HeaderNotes::default());
        let typos = notes(
            "order-id\torder-item-id\tsku\tquantity\tcurrency\tItem_Price\titem tax\t\
             shiping-price\titem-promotion-discont\tfulfilment-channel\tsku2",
        );
        assert_eq!(
            typos.lookalikes,
            vec![
                ("item_price".to_owned(), "item-price"),
                ("item tax".to_owned(), "item-tax"),
                ("shiping-price".to_owned(), "shipping-price"),
                (
                    "item-promotion-discont".to_owned(),
                    "item-promotion-discount"
                ),
                ("fulfilment-channel".to_owned(), "fulfillment-channel"),
                ("sku2".to_owned(), "sku"),
            ]
        );
        assert!(!typos.amount_columns, "no amount column is spelt right");
    }

    #[test]
    fn the_reader_streams_and_stops_at_the_first_bad_line() {
        let text = "\u{feff}order-id\torder-item-id\tsku\tquantity\r\n\r\n\
                    171-1234567-1234567\t12345678901234\tS\t1\r\n\
                    171-1234567-1234567\tbad\tS\t1\n\
                    171-1234567-1234567\t12345678901235\tS\t1\n";
        let mut report = OrderReport::new(text.as_bytes()).expect("header");
        let first = report.next().expect("a row").expect("valid");
        assert_eq!((first.line, first.sku.as_str()), (3, "S"));
        let e = report.next().expect("an error").expect_err("bad code");
        assert_eq!((e.line, e.column.as_deref()), (4, Some("order-item-id")));
        assert!(report.next().is_none(), "nothing after the first error");
    }

    #[test]
    fn short_lines_read_missing_fields_as_empty() {
        let text = "order-id\torder-item-id\tsku\tquantity-purchased\tquantity-shipped\n\
                    171-1234567-1234567\t12345678901234\tS\t2\n";
        let rows = parse_order_report(text).expect("valid");
        assert_eq!(rows[0].quantity_shipped, None);
    }

    /// qa11 F8: the bounds of an unlikely purchase-date, by its UTC day.
    #[test]
    fn unlikely_purchase_dates_are_after_tomorrow_or_before_1995() {
        let today = NaiveDate::from_ymd_opt(2026, 12, 1).expect("date");
        for (raw, want) in [
            ("2026-12-01", None),
            ("2026-12-02", None),
            ("2026-12-02T23:59:59Z", None),
            ("2026-12-03", Some(Unlikely::Future)),
            ("2026-12-02T16:00:00-08:00", Some(Unlikely::Future)),
            ("2062-11-01", Some(Unlikely::Future)),
            ("9999-12-31T23:59:59Z", Some(Unlikely::Future)),
            ("1995-01-01", None),
            ("1995-01-01T00:30:00+01:00", Some(Unlikely::Past)),
            ("1994-12-31T23:59:59Z", Some(Unlikely::Past)),
            ("0000-01-01", Some(Unlikely::Past)),
            ("not a date", None),
        ] {
            assert_eq!(unlikely_purchase_date(raw, today), want, "{raw:?}");
        }
    }
}
