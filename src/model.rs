//! Domain types shared by every layer: identifiers, exact money, currencies, component
//! types, adjustment reasons, quantities and the validated adjustment message.
//!
//! Values of these types are only made by `validate` (from the wire format) or by `store`
//! (from rows it wrote itself), so code that holds one can rely on its invariants. This
//! module knows nothing about XML, SQL or files.

use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;

use crate::canon::Digests;

/// A merchant (seller) identifier as it appears in `Header/MerchantIdentifier`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MerchantId(String);

impl MerchantId {
    /// What [`MerchantId::new`] accepts, for messages that refuse an id from user input.
    pub const RULE: &'static str = "1-50 characters, no control character, '/' or '\\', no \
                                    whitespace at either end, not \".\" or \"..\"";

    /// Accepts 1 to 50 characters without control characters or path separators (a merchant
    /// identifier also names a folder under `inbox/` and `outbox/`) and without whitespace at
    /// either end. A feed's `MerchantIdentifier` is trimmed before it gets here, so an id
    /// from anywhere else (`--merchant`, `allowed_merchants`, a folder name) that kept its
    /// surrounding blanks would name a merchant no feed can speak for. Spaces inside are
    /// part of the id, as in the schema's `xs:normalizedString`.
    pub fn new(raw: &str) -> Option<MerchantId> {
        let ok = !raw.is_empty()
            && raw.chars().count() <= 50
            && raw != "."
            && raw != ".."
            && raw.trim() == raw
            && !raw.chars().any(|c| c.is_control() || c == '/' || c == '\\');
        ok.then(|| MerchantId(raw.to_owned()))
    }

    /// The identifier as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MerchantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Amazon's order identifier: 3-7-7 ASCII letters or digits joined by hyphens. The schema
/// says `\w{3}-\w{7}-\w{7}`, whose `\w` admits any Unicode letter or symbol; real ids are
/// ASCII, so we (and `schemas/amzn-base.xsd`) accept `[A-Za-z0-9]` only.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AmazonOrderId(String);

impl AmazonOrderId {
    /// Accepts the 3-7-7 pattern with ASCII letters and digits.
    pub fn new(raw: &str) -> Option<AmazonOrderId> {
        // 19 bytes: dashes at 3 and 11, ASCII letters or digits everywhere else.
        let ok = raw.len() == 19
            && raw.bytes().enumerate().all(|(i, b)| match i {
                3 | 11 => b == b'-',
                _ => b.is_ascii_alphanumeric(),
            });
        ok.then(|| AmazonOrderId(raw.to_owned()))
    }

    /// The identifier as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AmazonOrderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Amazon's order item code. The 2012 schema says 14 digits; newer orders carry 15, so we
/// accept both (a documented deviation, see `schemas/amzn-base.xsd`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OrderItemCode(String);

impl OrderItemCode {
    /// Accepts exactly 14 or 15 ASCII digits.
    pub fn new(raw: &str) -> Option<OrderItemCode> {
        let ok = (raw.len() == 14 || raw.len() == 15) && raw.bytes().all(|b| b.is_ascii_digit());
        ok.then(|| OrderItemCode(raw.to_owned()))
    }

    /// The code as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for OrderItemCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A seller-chosen identifier (`MerchantOrderID`, `MerchantOrderItemID`,
/// `MerchantAdjustmentItemID`, SKU): a normalized string of at most 50 characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SellerId(String);

impl SellerId {
    /// Accepts 1 to 50 characters with no tab, carriage return or line feed (the schema's
    /// `normalizedString`).
    pub fn new(raw: &str) -> Option<SellerId> {
        let ok = !raw.is_empty()
            && raw.chars().count() <= 50
            && !raw.chars().any(|c| matches!(c, '\t' | '\r' | '\n'));
        ok.then(|| SellerId(raw.to_owned()))
    }

    /// The identifier as text (a derived key as the store holds it).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The idempotency key of an adjusted item that has no `MerchantAdjustmentItemID`
    /// (refund-rules §c3.2): the feed's canonical content digest ([`crate::canon`]), the
    /// MessageID and the item's position in the message, so a re-exported copy of a feed
    /// finds the keys of the first one. It starts with a tab, which no seller's id can
    /// hold, so it never meets one.
    pub fn derived(content_digest: &str, message: MessageId, position: usize) -> SellerId {
        let digest = content_digest.get(..32).unwrap_or(content_digest);
        SellerId(format!("{DERIVED}{digest} {} {position}", message.get()))
    }

    /// The idempotency key of an adjusted item without a `MerchantAdjustmentItemID` in a
    /// message where another item has one (`sibling`): that key and the item's position, so
    /// the message re-sent in any file, under any MessageID, is recognised whole. Starts
    /// with a tab like [`SellerId::derived`], then `+`, which no content digest starts with.
    pub fn derived_beside(sibling: &SellerId, position: usize) -> SellerId {
        SellerId(format!("{DERIVED}+{position} {}", sibling.0))
    }

    /// True for a key made by [`SellerId::derived`] or [`SellerId::derived_beside`].
    pub fn is_derived(&self) -> bool {
        self.0.starts_with(DERIVED)
    }

    /// A key as the store holds it: a seller's id or a derived key.
    pub fn from_stored(raw: &str) -> Option<SellerId> {
        if raw.starts_with(DERIVED) {
            Some(SellerId(raw.to_owned()))
        } else {
            SellerId::new(raw)
        }
    }
}

/// The first character of a derived key ([`SellerId::derived`]).
const DERIVED: char = '\t';

impl fmt::Display for SellerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.strip_prefix(DERIVED) {
            Some(beside) if beside.starts_with('+') => {
                let (position, sibling) = beside[1..].split_once(' ').unwrap_or((beside, ""));
                write!(
                    f,
                    "(none given; the key of AdjustedItem[{position}] beside MerchantAdjustmentItemID {sibling})"
                )
            }
            Some(derived) => {
                let mut parts = derived.split(' ');
                let digest = parts.next().unwrap_or_default();
                let message = parts.next().unwrap_or_default();
                let position = parts.next().unwrap_or_default();
                write!(
                    f,
                    "(none given; the key of MessageID {message}, AdjustedItem[{position}] of feed content {})",
                    digest.get(..12).unwrap_or(digest)
                )
            }
            None => f.write_str(&self.0),
        }
    }
}

/// `MessageID`: a positive integer of at most 20 digits (`IDNumber`); 0 is reserved for
/// feed-level results in reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(u64);

impl MessageId {
    /// The id used in reports for results that concern the whole feed.
    pub const FEED: MessageId = MessageId(0);

    /// Accepts 1 ..= u64::MAX. (`IDNumber` allows 20 digits; values above u64::MAX are
    /// rejected by `validate` with a clear message.)
    pub fn new(value: u64) -> Option<MessageId> {
        (value > 0).then_some(MessageId(value))
    }

    /// The numeric value.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A positive unit count (`xs:positiveInteger`, bounded to `u32` in practice).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Quantity(u32);

impl Quantity {
    /// Accepts 1 ..= u32::MAX.
    pub fn new(value: u32) -> Option<Quantity> {
        (value > 0).then_some(Quantity(value))
    }

    /// The numeric value.
    pub fn get(self) -> u32 {
        self.0
    }
}

/// An ISO 4217 currency with its minor-unit exponent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Currency {
    code: [u8; 3],
    exponent: u8,
}

/// ISO 4217 active codes with their minor-unit exponent (the "E" column), sorted by code.
/// Checked against several independent lists; the ones with exponent 0, 3 and 4 are the ones
/// that matter.
const CURRENCIES: &[(&str, u8)] = &[
    ("AED", 2),
    ("AFN", 2),
    ("ALL", 2),
    ("AMD", 2),
    ("ANG", 2),
    ("AOA", 2),
    ("ARS", 2),
    ("AUD", 2),
    ("AWG", 2),
    ("AZN", 2),
    ("BAM", 2),
    ("BBD", 2),
    ("BDT", 2),
    ("BGN", 2),
    ("BHD", 3),
    ("BIF", 0),
    ("BMD", 2),
    ("BND", 2),
    ("BOB", 2),
    ("BRL", 2),
    ("BSD", 2),
    ("BTN", 2),
    ("BWP", 2),
    ("BYN", 2),
    ("BZD", 2),
    ("CAD", 2),
    ("CDF", 2),
    ("CHF", 2),
    ("CLF", 4),
    ("CLP", 0),
    ("CNY", 2),
    ("COP", 2),
    ("CRC", 2),
    ("CUP", 2),
    ("CVE", 2),
    ("CZK", 2),
    ("DJF", 0),
    ("DKK", 2),
    ("DOP", 2),
    ("DZD", 2),
    ("EGP", 2),
    ("ERN", 2),
    ("ETB", 2),
    ("EUR", 2),
    ("FJD", 2),
    ("FKP", 2),
    ("GBP", 2),
    ("GEL", 2),
    ("GHS", 2),
    ("GIP", 2),
    ("GMD", 2),
    ("GNF", 0),
    ("GTQ", 2),
    ("GYD", 2),
    ("HKD", 2),
    ("HNL", 2),
    ("HTG", 2),
    ("HUF", 2),
    ("IDR", 2),
    ("ILS", 2),
    ("INR", 2),
    ("IQD", 3),
    ("IRR", 2),
    ("ISK", 0),
    ("JMD", 2),
    ("JOD", 3),
    ("JPY", 0),
    ("KES", 2),
    ("KGS", 2),
    ("KHR", 2),
    ("KMF", 0),
    ("KPW", 2),
    ("KRW", 0),
    ("KWD", 3),
    ("KYD", 2),
    ("KZT", 2),
    ("LAK", 2),
    ("LBP", 2),
    ("LKR", 2),
    ("LRD", 2),
    ("LSL", 2),
    ("LYD", 3),
    ("MAD", 2),
    ("MDL", 2),
    ("MGA", 2),
    ("MKD", 2),
    ("MMK", 2),
    ("MNT", 2),
    ("MOP", 2),
    ("MRU", 2),
    ("MUR", 2),
    ("MVR", 2),
    ("MWK", 2),
    ("MXN", 2),
    ("MYR", 2),
    ("MZN", 2),
    ("NAD", 2),
    ("NGN", 2),
    ("NIO", 2),
    ("NOK", 2),
    ("NPR", 2),
    ("NZD", 2),
    ("OMR", 3),
    ("PAB", 2),
    ("PEN", 2),
    ("PGK", 2),
    ("PHP", 2),
    ("PKR", 2),
    ("PLN", 2),
    ("PYG", 0),
    ("QAR", 2),
    ("RON", 2),
    ("RSD", 2),
    ("RUB", 2),
    ("RWF", 0),
    ("SAR", 2),
    ("SBD", 2),
    ("SCR", 2),
    ("SDG", 2),
    ("SEK", 2),
    ("SGD", 2),
    ("SHP", 2),
    ("SLE", 2),
    ("SOS", 2),
    ("SRD", 2),
    ("SSP", 2),
    ("STN", 2),
    ("SVC", 2),
    ("SYP", 2),
    ("SZL", 2),
    ("THB", 2),
    ("TJS", 2),
    ("TMT", 2),
    ("TND", 3),
    ("TOP", 2),
    ("TRY", 2),
    ("TTD", 2),
    ("TWD", 2),
    ("TZS", 2),
    ("UAH", 2),
    ("UGX", 0),
    ("USD", 2),
    ("UYI", 0),
    ("UYU", 2),
    ("UYW", 4),
    ("UZS", 2),
    ("VES", 2),
    ("VND", 0),
    ("VUV", 0),
    ("WST", 2),
    ("XAF", 0),
    ("XCD", 2),
    ("XOF", 0),
    ("XPF", 0),
    ("YER", 2),
    ("ZAR", 2),
    ("ZMW", 2),
    ("ZWG", 2),
];

impl Currency {
    /// The largest exponent of any ISO 4217 currency (CLF, UYW): an amount with more
    /// significant fraction digits is too precise whatever its currency.
    pub const MAX_EXPONENT: u32 = 4;

    /// Looks up an ISO 4217 code (upper case, exactly as in the feed).
    pub fn from_code(code: &str) -> Option<Currency> {
        // The table is sorted by code (a unit test keeps it so).
        CURRENCIES
            .binary_search_by(|(c, _)| (*c).cmp(code))
            .ok()
            .map(|at| {
                let (c, exponent) = CURRENCIES[at];
                let b = c.as_bytes();
                Currency {
                    code: [b[0], b[1], b[2]],
                    exponent,
                }
            })
    }

    /// The three-letter code.
    pub fn code(&self) -> &str {
        // The bytes come from the ASCII table above.
        std::str::from_utf8(&self.code).unwrap_or("???")
    }

    /// Number of fraction digits of the minor unit (JPY 0, USD 2, KWD 3, CLF 4).
    pub fn exponent(&self) -> u32 {
        u32::from(self.exponent)
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A signed decimal amount exactly as written in the feed (`BaseCurrencyAmount`), before
/// it is tied to a currency. Never a float.
///
/// The decimal keeps the trailing fraction zeros as written (when they fit its 28 digits),
/// so a problem can quote `-2.00` as the seller wrote it ([`Amount::written`]); equality,
/// hashing, ordering, [`Amount::value`] and `Display` go by the value, so `5.0` and `5.00`
/// are the same amount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Amount(Decimal);

/// Why a decimal string is not an [`Amount`]: each variant names the part of the number at
/// fault, so a caller can word the problem (refund-rules §c5 keeps integer digits a format
/// matter and fraction digits a precision matter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AmountError {
    /// Not `[+-]?digits[.digits]` (exponents, separators, empty and the like).
    Format,
    /// More than [`Amount::MAX_INTEGER_DIGITS`] integer digits (leading zeros do not count).
    IntegerDigits,
    /// More significant fraction digits than an amount holds beside its integer digits
    /// ([`Amount::MAX_DIGITS`] in all). Trailing zeros do not count, and no currency has
    /// more than [`Currency::MAX_EXPONENT`], so such an amount is always too precise.
    FractionDigits {
        /// How many significant fraction digits the text has.
        significant: u32,
    },
}

impl Amount {
    /// Integer digits an amount may have (`BaseCurrencyAmount`, totalDigits 20).
    pub const MAX_INTEGER_DIGITS: usize = 20;

    /// Significant digits an amount holds exactly (integer and fraction together): the
    /// precision of the underlying decimal.
    pub const MAX_DIGITS: usize = 28;

    /// Parses the XSD decimal lexical form after whitespace collapse: optional sign, digits,
    /// optional fraction. Trailing fraction zeros are kept out of the value's precision, so
    /// `3.900000` equals `3.90` and `1.000000000000000000000000000000` equals `1`. Rejects
    /// rather than rounds anything it cannot hold exactly.
    ///
    /// # Errors
    /// [`AmountError::Format`] for bad syntax; [`AmountError::IntegerDigits`] for more than
    /// 20 integer digits; [`AmountError::FractionDigits`] when the significant fraction
    /// digits do not fit beside the integer digits.
    pub fn parse(raw: &str) -> Result<Amount, AmountError> {
        let s = raw.trim_matches(|c| matches!(c, ' ' | '\t' | '\r' | '\n'));
        let (negative, unsigned) = match s.as_bytes().first() {
            Some(b'-') => (true, &s[1..]),
            Some(b'+') => (false, &s[1..]),
            _ => (false, s),
        };
        let (int_part, frac_part) = match unsigned.split_once('.') {
            Some((i, f)) => (i, f),
            None => (unsigned, ""),
        };
        if (int_part.is_empty() && frac_part.is_empty())
            || !int_part.bytes().all(|b| b.is_ascii_digit())
            || !frac_part.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(AmountError::Format);
        }
        let int_digits = int_part.trim_start_matches('0');
        let significant = frac_part.trim_end_matches('0');
        let too_precise = AmountError::FractionDigits {
            significant: u32::try_from(significant.len()).unwrap_or(u32::MAX),
        };
        if int_digits.len() > Amount::MAX_INTEGER_DIGITS {
            return Err(AmountError::IntegerDigits);
        }
        // With at most 20 integer digits, a number past 28 digits has too many fraction
        // digits: that is the cause to name, not its size.
        if int_digits.len() + significant.len() > Amount::MAX_DIGITS {
            return Err(too_precise);
        }
        // The trailing zeros as written, when they fit beside the other digits.
        let frac_digits = if int_digits.len() + frac_part.len() <= Amount::MAX_DIGITS {
            frac_part
        } else {
            significant
        };
        let mut mantissa: i128 = 0;
        for b in int_digits.bytes().chain(frac_digits.bytes()) {
            mantissa = mantissa * 10 + i128::from(b - b'0');
        }
        if negative {
            mantissa = -mantissa;
        }
        // 28 digits fit the decimal's 96-bit mantissa and scale, so neither error below can
        // happen; if one did, the fraction would be what does not fit.
        let scale = u32::try_from(frac_digits.len()).map_err(|_| too_precise)?;
        Decimal::try_from_i128_with_scale(mantissa, scale)
            .map(Amount)
            .map_err(|_| too_precise)
    }

    /// Builds an amount from integer minor units of a currency.
    pub fn from_minor(minor: i64, currency: Currency) -> Amount {
        Amount(Decimal::new(minor, currency.exponent()).normalize())
    }

    /// The exact decimal value, without trailing fraction zeros.
    pub fn value(self) -> Decimal {
        self.0.normalize()
    }

    /// The amount as the feed wrote it, for quoting in problems: its sign (a `+` is left
    /// out), the integer part without leading zeros and the fraction digits, trailing zeros
    /// included (`-2.00`, `999.50`, `0.5` for `.5`).
    pub fn written(self) -> impl fmt::Display {
        self.0
    }

    /// Number of significant fraction digits (trailing zeros do not count).
    pub fn fraction_digits(self) -> u32 {
        self.0.normalize().scale()
    }

    /// True for values below zero.
    pub fn is_negative(self) -> bool {
        self.0.is_sign_negative() && !self.0.is_zero()
    }

    /// Converts to integer minor units of `currency`, or `None` when the amount has more
    /// significant fraction digits than the currency allows (never rounds) or does not fit
    /// in `i64` minor units.
    pub fn to_minor(self, currency: Currency) -> Option<i64> {
        // On the integer mantissa (value = mantissa / 10^scale): `validate` asks this of
        // every amount with a currency, so no decimal arithmetic.
        let exponent = currency.exponent();
        let mut mantissa = self.0.mantissa();
        let mut scale = self.0.scale();
        while scale > exponent {
            if mantissa % 10 != 0 {
                return None;
            }
            mantissa /= 10;
            scale -= 1;
        }
        let minor = mantissa.checked_mul(10_i128.checked_pow(exponent - scale)?)?;
        i64::try_from(minor).ok()
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.normalize())
    }
}

/// Formats integer minor units as a decimal string with exactly the currency's fraction
/// digits (`1234` USD → `"12.34"`, `-5` USD → `"-0.05"`, `999` JPY → `"999"`).
pub fn format_minor(minor: i64, currency: Currency) -> String {
    let exponent = currency.exponent();
    if exponent == 0 {
        return minor.to_string();
    }
    let divisor = 10_u64.pow(exponent);
    let magnitude = minor.unsigned_abs();
    let sign = if minor < 0 { "-" } else { "" };
    format!(
        "{sign}{}.{:0width$}",
        magnitude / divisor,
        magnitude % divisor,
        width = exponent as usize
    )
}

/// How a component of an adjustment is bounded by the engine and the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ComponentClass {
    /// Something the buyer was charged for (Principal, Tax, Shipping, ...): an adjustment
    /// amount is a refund, never negative, and cumulatively at most what was charged.
    Charge,
    /// A charge to the buyer made by the adjustment (RestockingFee, RestockingFeeTax,
    /// ReturnShipping): negative; positive only to reverse an earlier fee, so the running
    /// total never goes above zero.
    Fee,
    /// A concession beyond what was charged (Goodwill, Other, FreeReplacementReturnShipping):
    /// never negative; not bounded by a charged amount.
    Concession,
    /// Reversal of a promotion discount (PromotionAdjustments): negative, cumulatively at
    /// most the discount the buyer received.
    Promotion,
}

impl ComponentClass {
    /// `charge`, `fee`, `concession` or `promotion`: the store's `class` column.
    pub fn as_str(self) -> &'static str {
        match self {
            ComponentClass::Charge => "charge",
            ComponentClass::Fee => "fee",
            ComponentClass::Concession => "concession",
            ComponentClass::Promotion => "promotion",
        }
    }
}

macro_rules! name_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $(#[doc = $text] $variant),+ }

        impl $name {
            /// Every value, in schema order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The name exactly as in the feed.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl FromStr for $name {
            type Err = ();
            fn from_str(s: &str) -> Result<$name, ()> {
                match s { $($text => Ok($name::$variant),)+ _ => Err(()) }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

name_enum! {
    /// `AdjustmentReason`: the 18 values of rev #12 (rev #11 has the first 16).
    AdjustmentReason {
        NoInventory = "NoInventory",
        CustomerReturn = "CustomerReturn",
        GeneralAdjustment = "GeneralAdjustment",
        CouldNotShip = "CouldNotShip",
        DifferentItem = "DifferentItem",
        Abandoned = "Abandoned",
        CustomerCancel = "CustomerCancel",
        PriceError = "PriceError",
        ProductOutofStock = "ProductOutofStock",
        CustomerAddressIncorrect = "CustomerAddressIncorrect",
        Exchange = "Exchange",
        Other = "Other",
        CarrierCreditDecision = "CarrierCreditDecision",
        RiskAssessmentInformationNotValid = "RiskAssessmentInformationNotValid",
        CarrierCoverageFailure = "CarrierCoverageFailure",
        TransactionRecord = "TransactionRecord",
        Undeliverable = "Undeliverable",
        RefusedDelivery = "RefusedDelivery",
    }
}

impl AdjustmentReason {
    /// Only these two reasons may carry `QuantityCancelled`.
    pub fn allows_cancellation(self) -> bool {
        matches!(
            self,
            AdjustmentReason::NoInventory | AdjustmentReason::CustomerCancel
        )
    }
}

name_enum! {
    /// `ItemPriceAdjustments/Component/Type`: the 16 values of rev #12 plus `CODFee` from
    /// rev #11's `BuyerPrice`.
    PriceComponent {
        Principal = "Principal",
        Shipping = "Shipping",
        CODFee = "CODFee",
        Tax = "Tax",
        ShippingTax = "ShippingTax",
        RestockingFee = "RestockingFee",
        RestockingFeeTax = "RestockingFeeTax",
        GiftWrap = "GiftWrap",
        GiftWrapTax = "GiftWrapTax",
        Surcharge = "Surcharge",
        ReturnShipping = "ReturnShipping",
        Goodwill = "Goodwill",
        ExportCharge = "ExportCharge",
        COD = "COD",
        CODTax = "CODTax",
        Other = "Other",
        FreeReplacementReturnShipping = "FreeReplacementReturnShipping",
    }
}

impl PriceComponent {
    /// How the engine and the store bound this component.
    pub fn class(self) -> ComponentClass {
        use PriceComponent as P;
        match self {
            P::RestockingFee | P::RestockingFeeTax | P::ReturnShipping => ComponentClass::Fee,
            P::Goodwill | P::Other | P::FreeReplacementReturnShipping => ComponentClass::Concession,
            _ => ComponentClass::Charge,
        }
    }

    /// Fees that count against the restocking-fee limit (a share of the Principal refunded
    /// in the same item).
    pub fn is_restocking_fee(self) -> bool {
        matches!(
            self,
            PriceComponent::RestockingFee | PriceComponent::RestockingFeeTax
        )
    }
}

name_enum! {
    /// `PromotionAdjustments/Component/Type` (`PromotionApplicationType`).
    PromotionComponent {
        Principal = "Principal",
        Shipping = "Shipping",
    }
}

/// Where an adjustment amount goes: one of the price components, or the reversal of a
/// promotion discount. The store names them `Principal` … and `Promotion:Principal`,
/// `Promotion:Shipping`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Component {
    /// An `ItemPriceAdjustments` component.
    Price(PriceComponent),
    /// A `PromotionAdjustments` component.
    Promotion(PromotionComponent),
}

impl Component {
    /// The bounding class of this component.
    pub fn class(self) -> ComponentClass {
        match self {
            Component::Price(price) => price.class(),
            Component::Promotion(_) => ComponentClass::Promotion,
        }
    }

    /// The stable name used in the store, the JSON outputs and the reports.
    pub fn name(self) -> &'static str {
        match self {
            Component::Price(price) => price.as_str(),
            Component::Promotion(PromotionComponent::Principal) => "Promotion:Principal",
            Component::Promotion(PromotionComponent::Shipping) => "Promotion:Shipping",
        }
    }

    /// Inverse of [`Component::name`].
    pub fn from_name(name: &str) -> Option<Component> {
        match name.strip_prefix("Promotion:") {
            Some(promo) => promo.parse().ok().map(Component::Promotion),
            None => name.parse().ok().map(Component::Price),
        }
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

name_enum! {
    /// `ActionType` (rev #12 only).
    ActionType {
        Refund = "Refund",
        Cancel = "Cancel",
    }
}

name_enum! {
    /// Who fulfils the order: the merchant (MFN) or Amazon (AFN). Sellers cannot refund AFN
    /// orders through the feed.
    FulfillmentChannel {
        Merchant = "MFN",
        Amazon = "AFN",
    }
}

/// How a message names its order.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum OrderRef {
    /// `AmazonOrderID`.
    Amazon(AmazonOrderId),
    /// `MerchantOrderID`, resolvable when the order report supplied it.
    Merchant(SellerId),
}

impl fmt::Display for OrderRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OrderRef::Amazon(id) => write!(f, "AmazonOrderID {id}"),
            OrderRef::Merchant(id) => write!(f, "MerchantOrderID {id}"),
        }
    }
}

/// How an adjusted item names its order item.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ItemRef {
    /// `AmazonOrderItemCode`.
    Amazon(OrderItemCode),
    /// `MerchantOrderItemID`.
    Merchant(SellerId),
}

impl fmt::Display for ItemRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ItemRef::Amazon(code) => write!(f, "AmazonOrderItemCode {code}"),
            ItemRef::Merchant(id) => write!(f, "MerchantOrderItemID {id}"),
        }
    }
}

/// Where something is in the feed file: 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Position {
    /// 1-based line.
    pub line: u32,
    /// 1-based column, counted in characters.
    pub column: u32,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// The envelope header of a feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedHeader {
    /// `Header/DocumentVersion`, e.g. `1.01`.
    pub document_version: String,
    /// `Header/MerchantIdentifier`: whose orders this feed may touch.
    pub merchant: MerchantId,
    /// Where `MerchantIdentifier` starts in the file.
    pub merchant_position: Option<Position>,
}

/// One amount of an adjusted item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ComponentAmount {
    /// Which component.
    pub component: Component,
    /// Signed amount: positive is money back to the buyer, negative a charge.
    pub amount: Amount,
    /// Where the `Amount` element starts.
    pub position: Position,
    /// Which `PromotionAdjustments` element of the item holds it (1 for the first); 0 for
    /// `ItemPriceAdjustments`. Problems name the element path with it.
    pub group: u32,
}

/// A validated `AdjustedItem`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdjustedItem {
    /// The order item.
    pub item: ItemRef,
    /// `MerchantAdjustmentItemID`: the seller's idempotency key, unique per merchant.
    pub key: Option<SellerId>,
    /// For a key derived from the feed's content digest ([`SellerId::derived`]): the key
    /// earlier builds derived for the item, from the earlier canonical form
    /// ([`crate::canon::Digests::earlier`]). A copy of a feed such a build processed finds
    /// its keys under it. `None` otherwise.
    pub earlier_key: Option<SellerId>,
    /// `AdjustmentReason`.
    pub reason: AdjustmentReason,
    /// Price and promotion amounts in document order. A price component appears at most
    /// once; a promotion component at most once per `PromotionAdjustments` ([`group`]), so
    /// it can appear once for each promotion, and its amounts then add up.
    ///
    /// [`group`]: ComponentAmount::group
    pub amounts: Vec<ComponentAmount>,
    /// `QuantityCancelled`.
    pub quantity_cancelled: Option<Quantity>,
    /// `Quantity` (rev #12): units the refund concerns.
    pub quantity: Option<Quantity>,
    /// Where the `AdjustedItem` element starts.
    pub position: Position,
    /// Where the elements that checks against the store name start, so each such problem
    /// points at the element it names, not at the `AdjustedItem`.
    pub positions: ItemPositions,
}

/// Where the single-valued elements of an `AdjustedItem` start in the file (the amounts keep
/// theirs in [`ComponentAmount::position`]). `None` for an element the item does not have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ItemPositions {
    /// `AmazonOrderItemCode` or `MerchantOrderItemID`.
    pub item_ref: Position,
    /// `MerchantAdjustmentItemID`.
    pub key: Option<Position>,
    /// `QuantityCancelled`.
    pub quantity_cancelled: Option<Position>,
    /// `Quantity`.
    pub quantity: Option<Position>,
}

/// A validated `Message` holding an `OrderAdjustment`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdjustmentMessage {
    /// `MessageID`.
    pub message_id: MessageId,
    /// The order.
    pub order: OrderRef,
    /// `ActionType`, when given.
    pub action: Option<ActionType>,
    /// The currency all amounts of the message declared, `None` when no `currency` attribute
    /// was given (rev #12 makes it optional: the order's currency applies).
    pub currency: Option<Currency>,
    /// At least one item.
    pub items: Vec<AdjustedItem>,
    /// Where the `Message` element starts.
    pub position: Position,
    /// Where the `AmazonOrderID` or `MerchantOrderID` element starts: problems about the
    /// order point at it.
    pub order_position: Position,
}

impl AdjustmentMessage {
    /// Gives every adjusted item without a `MerchantAdjustmentItemID` its idempotency key
    /// (refund-rules §c3.2): beside a seller's key of the same message, one derived from
    /// that key ([`SellerId::derived_beside`]); in a message without any, one derived from
    /// the feed's canonical content digests ([`SellerId::derived`]; the earlier digest gives
    /// [`AdjustedItem::earlier_key`]), which `digests` is asked for only then.
    pub fn derive_missing_keys<'d>(&mut self, digests: impl FnOnce() -> &'d Digests) {
        if self.items.iter().all(|item| item.key.is_some()) {
            return;
        }
        let message_id = self.message_id;
        match self.items.iter().find_map(|item| item.key.clone()) {
            Some(sibling) => {
                for (index, item) in self.items.iter_mut().enumerate() {
                    if item.key.is_none() {
                        item.key = Some(SellerId::derived_beside(&sibling, index + 1));
                    }
                }
            }
            None => {
                let digests = digests();
                for (index, item) in self.items.iter_mut().enumerate() {
                    item.key = Some(SellerId::derived(&digests.current, message_id, index + 1));
                    item.earlier_key =
                        Some(SellerId::derived(&digests.earlier, message_id, index + 1));
                }
            }
        }
    }
}

/// The forms of an order report's `purchase-date` that [`parse_purchase_date`] accepts,
/// briefly, for the import's error.
pub const PURCHASE_DATE_FORMS: &str = "2026-11-02, 2026-11-02T09:14:33Z, \
     2026-11-02T09:14:33-08:00 (or -0800, -08), 2026-11-02 09:14:33 PST (or PDT, UTC, GMT), \
     or 2026-11-02 09:14:33 without a zone (that day as written)";

/// A `purchase-date` as [`parse_purchase_date`] reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PurchaseMoment {
    /// A date only, or a date-time without a zone: the day as written (the next day for
    /// `24:00:00`).
    Day(chrono::NaiveDate),
    /// A date-time with a zone: the instant it names.
    Instant(chrono::DateTime<chrono::Utc>),
}

/// The value of the ASCII digits of `bytes` at `range`, when all of them are digits.
fn digits_value(bytes: &[u8], range: std::ops::Range<usize>) -> Option<u32> {
    let part = bytes.get(range)?;
    part.iter().all(u8::is_ascii_digit).then_some(())?;
    part.iter()
        .try_fold(0_u32, |n, digit| Some(n * 10 + u32::from(digit - b'0')))
}

/// The real calendar date `YYYY-MM-DD` that `bytes` start with.
fn leading_date(bytes: &[u8]) -> Option<chrono::NaiveDate> {
    if bytes.get(4) != Some(&b'-') || bytes.get(7) != Some(&b'-') {
        return None;
    }
    let number = |range| digits_value(bytes, range);
    let year = i32::try_from(number(0..4)?).ok()?;
    chrono::NaiveDate::from_ymd_opt(year, number(5..7)?, number(8..10)?)
}

/// Reads a `purchase-date` by the strict rules of [`parse_purchase_date`].
fn parse_purchase_moment(raw: &str) -> Option<PurchaseMoment> {
    use chrono::{Datelike as _, NaiveTime, TimeDelta};
    let bytes = raw.as_bytes();
    let number = |range| digits_value(bytes, range);
    let day = leading_date(bytes)?;
    match bytes.get(10) {
        None => return Some(PurchaseMoment::Day(day)),
        Some(b'T' | b't' | b' ') => {}
        Some(_) => return None,
    }
    let hour = number(11..13)?;
    (bytes.get(13) == Some(&b':')).then_some(())?;
    let minute = number(14..16)?;
    let mut at = 16;
    let mut second = 0;
    let mut nano = 0;
    if bytes.get(at) == Some(&b':') {
        second = number(17..19)?;
        at = 19;
        if bytes.get(at) == Some(&b'.') {
            let digits = bytes[at + 1..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .count();
            if !(1..=9).contains(&digits) {
                return None;
            }
            nano = number(at + 1..at + 1 + digits)? * 10_u32.pow(9 - u32::try_from(digits).ok()?);
            at += 1 + digits;
        }
    }
    // 24:00:00 is the end of the day, that is the start of the next; a leap second (:60)
    // is the last second of its minute, as chrono (and RFC 3339) reads it.
    let (day, time) = if hour == 24 && minute == 0 && second == 0 && nano == 0 {
        // A date of four digits, as written: 9999-12-31T24:00:00 is none.
        let next = day.succ_opt().filter(|next| next.year() <= 9999)?;
        (next, NaiveTime::MIN)
    } else if second == 60 {
        (
            day,
            NaiveTime::from_hms_nano_opt(hour, minute, 59, 1_000_000_000 + nano)?,
        )
    } else {
        (
            day,
            NaiveTime::from_hms_nano_opt(hour, minute, second, nano)?,
        )
    };
    let zone = &raw[at..];
    let offset_minutes: i64 = match zone {
        "" => return Some(PurchaseMoment::Day(day)),
        "Z" | "z" => 0,
        _ if zone.starts_with(['+', '-']) => {
            let digits = &zone.as_bytes()[1..];
            let (hours, minutes) = match digits.len() {
                2 => (number(at + 1..at + 3)?, 0),
                4 => (number(at + 1..at + 3)?, number(at + 3..at + 5)?),
                5 if digits[2] == b':' => (number(at + 1..at + 3)?, number(at + 4..at + 6)?),
                _ => return None,
            };
            if hours > 23 || minutes > 59 {
                return None;
            }
            let minutes = i64::from(hours * 60 + minutes);
            if zone.starts_with('-') {
                -minutes
            } else {
                minutes
            }
        }
        // The zone names of Amazon's older US reports, attached or after a space; any
        // other name is refused rather than guessed (CST is China's as well as Chicago's).
        _ => match zone.strip_prefix(' ').unwrap_or(zone) {
            "UTC" | "GMT" => 0,
            "PST" => -8 * 60,
            "PDT" => -7 * 60,
            _ => return None,
        },
    };
    let utc = day
        .and_time(time)
        .checked_sub_signed(TimeDelta::minutes(offset_minutes))?;
    Some(PurchaseMoment::Instant(utc.and_utc()))
}

/// The calendar day of an order report's `purchase-date`, by the day a refund's processing
/// day is compared with (see [`PURCHASE_DATE_FORMS`]). Accepted, and nothing else:
/// - a date only, `2026-11-02`: that day;
/// - a date-time: the date, then `T`, `t` or a space, then `HH:MM` or `HH:MM:SS` with
///   optional fractional seconds (`.` and 1 to 9 digits), then
///   - nothing (no zone): the day as written;
///   - or a zone: `Z`/`z`, `±HH:MM`, `±HHMM` or `±HH` (within ±23:59), or one of the zone
///     names `UTC`, `GMT` (0), `PST` (−8), `PDT` (−7), attached or after a space (Amazon's
///     older US reports): the UTC day of that instant, like the processing day.
///
/// `24:00` (with zero seconds and no fraction) is the start of the next day; a leap second
/// (`23:59:60`) belongs to its day. `None` for anything else: no real calendar
/// date (`2026-02-30`), an hour above 23, an offset above 23:59, another zone name, text
/// after the value.
///
/// The import accepts exactly what this parses and stores the text as written; the store
/// reads stored text with [`stored_purchase_date`], so the rules compare dates, never text.
pub fn parse_purchase_date(raw: &str) -> Option<chrono::NaiveDate> {
    match parse_purchase_moment(raw)? {
        PurchaseMoment::Day(day) => Some(day),
        PurchaseMoment::Instant(instant) => Some(instant.date_naive()),
    }
}

/// Whether two `purchase-date` values say the same: the same instant when both have a zone
/// (`2026-11-02T09:14:33Z` and `2026-11-02T09:14:33+00:00`), else the same text.
pub fn same_purchase_date(a: &str, b: &str) -> bool {
    match (purchase_instant(a), purchase_instant(b)) {
        (Some(a), Some(b)) => a == b,
        _ => a == b,
    }
}

/// The instant a `purchase-date` names, when it has a zone (see [`parse_purchase_date`]);
/// `None` for a date only, a date-time without a zone, or text it refuses.
pub fn purchase_instant(raw: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    match parse_purchase_moment(raw)? {
        PurchaseMoment::Instant(instant) => Some(instant),
        PurchaseMoment::Day(_) => None,
    }
}

/// The day of a `purchase-date` read back from the store: [`parse_purchase_date`], or,
/// for text it refuses, the reading of the builds before it was made strict. Those let in
/// any text after `YYYY-MM-DDT` (or a space): they counted an RFC 3339 value (as chrono
/// reads it, which also takes more than 9 fractional digits and a `−` minus sign) by its
/// UTC day and anything else by the day as written. So a stored value the import would now
/// refuse keeps the day it had, and never fails the load of its order; the values whose
/// old reading was wrong (`-0800`, `-08`, `PST`, `24:00:00`, `HH:MM` with an offset) are
/// accepted by [`parse_purchase_date`] and get the corrected day. `None` for text that is
/// no date at all (`2026-02-30`, which older builds still let in): no purchase date.
pub fn stored_purchase_date(raw: &str) -> Option<chrono::NaiveDate> {
    parse_purchase_date(raw).or_else(|| lenient_purchase_date(raw))
}

/// The purchase-date reading of the builds before [`parse_purchase_date`] was strict; only
/// for stored text ([`stored_purchase_date`]).
fn lenient_purchase_date(raw: &str) -> Option<chrono::NaiveDate> {
    let bytes = raw.as_bytes();
    let day = leading_date(bytes)?;
    match bytes.get(10) {
        None => Some(day),
        Some(b'T' | b' ') => Some(
            chrono::DateTime::parse_from_rfc3339(raw)
                .map_or(day, |moment| moment.naive_utc().date()),
        ),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_currency_table_is_sorted_so_every_code_is_found() {
        assert!(CURRENCIES.windows(2).all(|w| w[0].0 < w[1].0));
        for (code, exponent) in CURRENCIES {
            let currency = Currency::from_code(code).expect(code);
            assert_eq!(
                (currency.code(), currency.exponent()),
                (*code, u32::from(*exponent))
            );
        }
        let max = CURRENCIES.iter().map(|(_, e)| u32::from(*e)).max();
        assert_eq!(max, Some(Currency::MAX_EXPONENT));
        assert_eq!(Currency::from_code("XXX"), None);
        assert_eq!(Currency::from_code("usd"), None);
        assert_eq!(Currency::from_code(""), None);
    }

    #[test]
    fn amount_parsing_is_exact_and_never_rounds() {
        let usd = Currency::from_code("USD").expect("USD is in the table");
        let jpy = Currency::from_code("JPY").expect("JPY is in the table");
        let kwd = Currency::from_code("KWD").expect("KWD is in the table");
        let parse = |s: &str| Amount::parse(s).expect(s);
        assert_eq!(parse("10.00").to_minor(usd), Some(1000));
        assert_eq!(parse("3.900000").to_minor(usd), Some(390));
        assert_eq!(parse(" -4.00 ").to_minor(usd), Some(-400));
        assert_eq!(parse("+10").to_minor(usd), Some(1000));
        assert_eq!(parse("10.005").to_minor(usd), None);
        assert_eq!(parse("999").to_minor(jpy), Some(999));
        assert_eq!(parse("999.00").to_minor(jpy), Some(999));
        assert_eq!(parse("999.5").to_minor(jpy), None);
        assert_eq!(parse("1.234").to_minor(kwd), Some(1234));
        assert_eq!(parse(".5").to_minor(usd), Some(50));
        assert_eq!(Amount::parse("1,000.00"), Err(AmountError::Format));
        assert_eq!(Amount::parse("1e3"), Err(AmountError::Format));
        assert_eq!(Amount::parse(""), Err(AmountError::Format));
        assert_eq!(Amount::parse("-"), Err(AmountError::Format));
        assert_eq!(Amount::parse("."), Err(AmountError::Format));
        assert_eq!(
            Amount::parse("123456789012345678901"),
            Err(AmountError::IntegerDigits)
        );
        assert_eq!(
            Amount::parse("0000000000000000000000000001.50").map(|a| a.to_minor(usd)),
            Ok(Some(150))
        );
        assert!(Amount::parse("12345678901234567890").is_ok());
    }

    #[test]
    fn amount_errors_name_integer_or_fraction_digits_as_the_cause() {
        let usd = Currency::from_code("USD").expect("USD is in the table");
        // One integer digit and 28 fraction digits: too precise, not too large.
        assert_eq!(
            Amount::parse("1.0000000000000000000000000001"),
            Err(AmountError::FractionDigits { significant: 28 })
        );
        assert_eq!(
            Amount::parse("12345678901234567890.123456789"),
            Err(AmountError::FractionDigits { significant: 9 })
        );
        assert_eq!(
            Amount::parse("-0.00000000000000000000000000000000000001"),
            Err(AmountError::FractionDigits { significant: 38 })
        );
        // Trailing zeros are not significant, however many.
        let one = Amount::parse("1.000000000000000000000000000000").expect("trailing zeros");
        assert_eq!(
            (one.to_string(), one.to_minor(usd)),
            ("1".to_owned(), Some(100))
        );
        let max = Amount::parse("12345678901234567890.12345678").expect("28 digits fit");
        assert_eq!(max.fraction_digits(), 8);
        // Digits beyond any currency's exponent still parse; what a currency allows is the
        // caller's check.
        assert_eq!(Amount::parse("1.00001").map(Amount::fraction_digits), Ok(5));
        assert_eq!(
            Amount::parse("123456789012345678901.5"),
            Err(AmountError::IntegerDigits)
        );
    }

    #[test]
    fn amounts_are_quoted_as_written_and_compared_by_value() {
        let parse = |s: &str| Amount::parse(s).expect(s);
        assert_eq!(parse("-2.00").written().to_string(), "-2.00");
        assert_eq!(parse("999.50").written().to_string(), "999.50");
        assert_eq!(parse(".5").written().to_string(), "0.5");
        assert_eq!(parse("+0010").written().to_string(), "10");
        assert_eq!(parse("-2.00").to_string(), "-2");
        assert_eq!(parse("-2.00"), parse("-2"));
        assert_eq!(parse("999.50").value().scale(), 1);
        assert_eq!(parse("999.50").fraction_digits(), 1);
        // Zeros that do not fit beside the other digits are not kept.
        let long = parse("12345678901234567890.1000000000");
        assert_eq!(long.written().to_string(), "12345678901234567890.1");
    }

    #[test]
    fn minor_units_are_exact_and_refuse_what_does_not_fit() {
        let usd = Currency::from_code("USD").expect("USD");
        let jpy = Currency::from_code("JPY").expect("JPY");
        let clf = Currency::from_code("CLF").expect("CLF");
        let minor = |raw: &str, currency| Amount::parse(raw).expect(raw).to_minor(currency);
        assert_eq!(minor("12.34", usd), Some(1234));
        assert_eq!(minor("-0.05", usd), Some(-5));
        assert_eq!(minor("3.900000", usd), Some(390));
        assert_eq!(minor("150", usd), Some(15000));
        assert_eq!(minor("0.5", jpy), None);
        assert_eq!(minor("500.000", jpy), Some(500));
        assert_eq!(minor("1.00001", clf), None);
        assert_eq!(minor("-0.00", usd), Some(0));
        assert_eq!(minor("92233720368547758.07", usd), Some(i64::MAX));
        assert_eq!(minor("92233720368547758.08", usd), None);
        assert_eq!(minor("-92233720368547758.08", usd), Some(i64::MIN));
        assert_eq!(minor("922337203685477.5808", clf), None);
        assert_eq!(minor("9223372036854775807", jpy), Some(i64::MAX));
        assert_eq!(minor("99999999999999999999.0000", jpy), None);
    }

    #[test]
    fn minor_units_format_with_the_currency_exponent() {
        let usd = Currency::from_code("USD").expect("USD");
        let jpy = Currency::from_code("JPY").expect("JPY");
        let clf = Currency::from_code("CLF").expect("CLF");
        assert_eq!(format_minor(1234, usd), "12.34");
        assert_eq!(format_minor(-5, usd), "-0.05");
        assert_eq!(format_minor(0, usd), "0.00");
        assert_eq!(format_minor(999, jpy), "999");
        assert_eq!(format_minor(10001, clf), "1.0001");
        assert_eq!(format_minor(i64::MIN, usd), "-92233720368547758.08");
    }

    #[test]
    fn identifiers_follow_the_schema_patterns() {
        assert!(AmazonOrderId::new("123-1234567-1234567").is_some());
        assert!(AmazonOrderId::new("A2B-1234567-1234567").is_some());
        assert!(AmazonOrderId::new("A2_-1234567-1234567").is_none());
        assert!(AmazonOrderId::new("123-123456-1234567").is_none());
        assert!(AmazonOrderId::new("123-1234567-1234567-").is_none());
        assert!(AmazonOrderId::new("1234-123456-1234567").is_none());
        assert!(AmazonOrderId::new("123-12345678-123456").is_none());
        assert!(AmazonOrderId::new("123-1234567-123456é").is_none());
        assert!(AmazonOrderId::new("123-1234567--234567").is_none());
        assert!(AmazonOrderId::new("").is_none());
        assert!(OrderItemCode::new("12345678901234").is_some());
        assert!(OrderItemCode::new("123456789012345").is_some());
        assert!(OrderItemCode::new("1234567890123").is_none());
        assert!(OrderItemCode::new("1234567890123a").is_none());
        assert!(MerchantId::new("../evil").is_none());
        assert!(MerchantId::new("M_1").is_some());
    }

    #[test]
    fn merchant_ids_have_no_whitespace_at_either_end() {
        // A feed's MerchantIdentifier is trimmed before it becomes a MerchantId; an id with
        // whitespace at an end (`--merchant 'A1SELLER '`) would name a merchant no feed can.
        for raw in [
            "A1SELLER ",
            " A1SELLER",
            "\tA1SELLER",
            "A1SELLER\n",
            "A1SELLER\u{a0}",
            " ",
        ] {
            assert!(MerchantId::new(raw).is_none(), "{raw:?}");
        }
        // Inside, a space is part of the id (as in an xs:normalizedString).
        assert!(MerchantId::new("A1 SELLER").is_some());
        assert!(
            MerchantId::new("A1\tSELLER").is_none(),
            "a control character"
        );
    }

    #[test]
    fn component_names_round_trip() {
        for price in PriceComponent::ALL {
            let component = Component::Price(*price);
            assert_eq!(Component::from_name(component.name()), Some(component));
        }
        for promo in PromotionComponent::ALL {
            let component = Component::Promotion(*promo);
            assert_eq!(Component::from_name(component.name()), Some(component));
        }
        assert_eq!(Component::from_name("Bogus"), None);
    }

    #[test]
    fn purchase_dates_are_calendar_days_in_utc_when_an_offset_is_given() {
        let day = |y, m, d| chrono::NaiveDate::from_ymd_opt(y, m, d);
        assert_eq!(parse_purchase_date("2026-11-02"), day(2026, 11, 2));
        assert_eq!(
            parse_purchase_date("2026-11-02T09:14:33+00:00"),
            day(2026, 11, 2)
        );
        assert_eq!(
            parse_purchase_date("2026-11-02T09:14:33Z"),
            day(2026, 11, 2)
        );
        // Late evening in Seattle is the next day in UTC.
        assert_eq!(
            parse_purchase_date("2026-11-02T20:00:00-08:00"),
            day(2026, 11, 3)
        );
        assert_eq!(
            parse_purchase_date("2026-11-02T01:00:00+09:00"),
            day(2026, 11, 1)
        );
        // No zone: the day as written.
        assert_eq!(parse_purchase_date("2026-11-02 09:14:33"), day(2026, 11, 2));
        assert_eq!(parse_purchase_date("2026-11-02 23:59:59"), day(2026, 11, 2));
        // A zone name of Amazon's older US reports is an offset too (qa11 F1: these were
        // counted by the day as written, a day early for an evening purchase).
        assert_eq!(
            parse_purchase_date("2026-11-02T09:14:33 PST"),
            day(2026, 11, 2)
        );
        assert_eq!(
            parse_purchase_date("2026-11-02T20:00:00 PST"),
            day(2026, 11, 3)
        );
        assert_eq!(
            parse_purchase_date("2026-11-02T20:00:00-0800"),
            day(2026, 11, 3)
        );
        assert_eq!(
            parse_purchase_date("2026-11-02T20:00:00-08"),
            day(2026, 11, 3)
        );
        assert_eq!(
            parse_purchase_date("2026-11-02T24:00:00Z"),
            day(2026, 11, 3)
        );
        assert_eq!(parse_purchase_date("2024-02-29"), day(2024, 2, 29));
        for bad in [
            "",
            "yesterday",
            "2026-13-01",
            "2026-02-30",
            "2025-02-29",
            "2026-11-2",
            "2026/11/02",
            "2026-11-02x",
            "+026-11-02",
            "02-11-2026",
            "2026-11-30Tgarbage",
            "2026-11-30T",
        ] {
            assert_eq!(parse_purchase_date(bad), None, "{bad:?}");
        }
    }

    /// Every accepted form (qa11 F1, F2), with the UTC day it counts by.
    #[test]
    fn purchase_date_forms_accepted() {
        let cases: &[(&str, (i32, u32, u32))] = &[
            // Date only.
            ("2026-11-30", (2026, 11, 30)),
            ("2024-02-29", (2024, 2, 29)),
            ("0000-01-01", (0, 1, 1)),
            // No zone: the day as written, whatever the time.
            ("2026-11-30T10:15", (2026, 11, 30)),
            ("2026-11-30T23:59:59", (2026, 11, 30)),
            ("2026-11-30 23:59:59.999999999", (2026, 11, 30)),
            ("2026-11-30t00:00:00.5", (2026, 11, 30)),
            ("2026-11-30T23:59:60", (2026, 11, 30)),
            ("2026-11-30T24:00:00", (2026, 12, 1)),
            ("2026-11-30T24:00", (2026, 12, 1)),
            ("2026-12-31T24:00:00", (2027, 1, 1)),
            // Z in either case, and either case of T.
            ("2026-11-30T10:15:00Z", (2026, 11, 30)),
            ("2026-11-30t10:15:00z", (2026, 11, 30)),
            ("2026-11-30 10:15:00Z", (2026, 11, 30)),
            ("2026-11-30T10:15Z", (2026, 11, 30)),
            ("2026-11-30T10:15:00.1Z", (2026, 11, 30)),
            ("2026-11-30T10:15:00.123456789Z", (2026, 11, 30)),
            // Leap second: its own day; 24:00 the next.
            ("2026-12-31T23:59:60Z", (2026, 12, 31)),
            ("2026-12-31T23:59:60.5Z", (2026, 12, 31)),
            ("2026-11-30T24:00:00Z", (2026, 12, 1)),
            ("2026-11-30T24:00:00.000Z", (2026, 12, 1)),
            ("2026-11-30T24:00:00+01:00", (2026, 11, 30)),
            ("2026-11-30T24:00:00-01:00", (2026, 12, 1)),
            // ±HH:MM, ±HHMM, ±HH.
            ("2026-11-30T15:59:59-08:00", (2026, 11, 30)),
            ("2026-11-30T16:00:00-08:00", (2026, 12, 1)),
            ("2026-11-30T16:00:00-0800", (2026, 12, 1)),
            ("2026-11-30T16:00:00-08", (2026, 12, 1)),
            ("2026-11-30T16:00-08:00", (2026, 12, 1)),
            ("2026-11-30T15:59-08", (2026, 11, 30)),
            ("2026-11-30T05:44:59+05:45", (2026, 11, 29)),
            ("2026-11-30T05:45:00+0545", (2026, 11, 30)),
            ("2026-11-30T00:30:00+01", (2026, 11, 29)),
            ("2026-11-30T00:00:00-00:00", (2026, 11, 30)),
            ("2026-11-30T00:00:00+23:59", (2026, 11, 29)),
            ("2026-11-30T23:59:59-23:59", (2026, 12, 1)),
            ("2026-11-30T10:15:00.5+00:00", (2026, 11, 30)),
            // Zone names, after a space or attached.
            ("2026-11-30 16:00:00 PST", (2026, 12, 1)),
            ("2026-11-30 15:59:59 PST", (2026, 11, 30)),
            ("2026-11-30T16:59:59PDT", (2026, 11, 30)),
            ("2026-11-30T17:00:00 PDT", (2026, 12, 1)),
            ("2026-11-30T23:59:59 UTC", (2026, 11, 30)),
            ("2026-11-30T23:59:59GMT", (2026, 11, 30)),
            ("2026-11-30 24:00:00 GMT", (2026, 12, 1)),
        ];
        for (raw, (y, m, d)) in cases {
            let want = chrono::NaiveDate::from_ymd_opt(*y, *m, *d);
            assert!(want.is_some(), "{raw:?}: the table's day");
            assert_eq!(parse_purchase_date(raw), want, "{raw:?}");
            assert_eq!(stored_purchase_date(raw), want, "{raw:?} stored");
        }
    }

    /// Every refused form (qa11 F2): the import names them as bad lines.
    #[test]
    fn purchase_date_forms_refused() {
        for bad in [
            "2026-11-30Tgarbage",
            "2026-11-30T",
            "2026-11-30 ",
            "2026-11-30T10",
            "2026-11-30T10:",
            "2026-11-30T10:1",
            "2026-11-30T10:15:",
            "2026-11-30T10:15:0",
            "2026-11-30T1:15:00",
            "2026-11-30T10:15:00+25:00",
            "2026-11-30T10:15:00+24:00",
            "2026-11-30T10:15:00+23:60",
            "2026-11-30T10:15:00+2",
            "2026-11-30T10:15:00+123",
            "2026-11-30T10:15:00+12345",
            "2026-11-30T10:15:00+12:3",
            "2026-11-30T10:15:00+12-30",
            "2026-11-30T10:15:00\u{2212}08:00",
            "2026-11-30T10:15:00+00:00junk",
            "2026-11-30T10:15:00Z ",
            "2026-11-30T10:15:00ZZ",
            "2026-11-30T10:15:00 Z",
            "2026-11-30T10:15:00 +00:00",
            "2026-11-30T10:15:00,5Z",
            "2026-11-30T10:15:00.+00:00",
            "2026-11-30T10:15:00.",
            "2026-11-30T10:15:00.1234567890Z",
            "2026-11-30T10:15.5Z",
            "2026-11-30T10:15:00 CST",
            "2026-11-30T10:15:00 EST",
            "2026-11-30T10:15:00 pst",
            "2026-11-30T10:15:00  PST",
            "2026-11-30T10:15:00 PST8PDT",
            "2026-11-30T10:15:00 America/Los_Angeles",
            "2026-11-30T25:00:00Z",
            "2026-11-30T24:00:01Z",
            "2026-11-30T24:01:00",
            "2026-11-30T24:00:00.5Z",
            "2026-11-30T23:60:00Z",
            "2026-11-30T23:59:61Z",
            "2026-11-30T10:15:00Z\n",
            "9999-12-31T24:00:00Z",
            "2026-11-30X10:15:00Z",
            "2026-11-30_10:15:00Z",
            " 2026-11-30",
            "2026-11-30 PST",
        ] {
            assert_eq!(parse_purchase_date(bad), None, "{bad:?}");
        }
    }

    /// A value an older build stored (it let in anything after `YYYY-MM-DDT` and counted
    /// an RFC 3339 value by its UTC day, anything else by the day as written) keeps the
    /// day it had, unless its old reading was wrong (qa11 F1): then it gets the corrected
    /// one. None makes the load fail.
    #[test]
    fn stored_purchase_dates_keep_the_day_older_builds_gave() {
        let day = |y, m, d| chrono::NaiveDate::from_ymd_opt(y, m, d);
        let same = [
            "2026-11-30",
            "2026-11-30T10:15:00Z",
            "2026-11-30T23:30:00-08:00",
            "2026-11-30 23:30:00-08:00",
            "2026-11-30T00:30:00+05:45",
            "2026-11-30T23:59:60Z",
            "2026-11-30T23:59:60-08:00",
            "2026-11-30T23:59:59.5-00:01",
            "2026-11-30T10:15:00.123456+00:00",
            "2026-11-30 10:15:00",
            "2026-11-30T23:59:59",
            // Refused by the import now; stored by older builds.
            "2026-11-30Tgarbage",
            "2026-11-30T",
            "2026-11-30 ",
            "2026-11-30T10:15:00+25:00",
            "2026-11-30T23:30:00+00:00junk",
            "2026-11-30T10:15:00,5Z",
            "2026-11-30T10:15:00.+00:00",
            "2026-11-30T23:59:59.1234567890-08:00",
            "2026-11-30T23:59:59\u{2212}08:00",
            "2026-11-30T23:59:59 CST",
            "9999-12-31T24:00:00Z",
        ];
        for raw in same {
            let old = lenient_purchase_date(raw);
            assert!(old.is_some(), "{raw:?}: an older build stored it");
            assert_eq!(stored_purchase_date(raw), old, "{raw:?}");
        }
        assert_eq!(
            stored_purchase_date("2026-11-30T23:59:59.1234567890-08:00"),
            day(2026, 12, 1)
        );
        assert_eq!(
            stored_purchase_date("2026-11-30Tgarbage"),
            day(2026, 11, 30)
        );
        // The old reading was a day early for these: corrected.
        let corrected = [
            (
                "2026-11-01T20:00:00 PST",
                day(2026, 11, 1),
                day(2026, 11, 2),
            ),
            (
                "2026-11-01T20:00:00-0800",
                day(2026, 11, 1),
                day(2026, 11, 2),
            ),
            ("2026-11-01T20:00:00-08", day(2026, 11, 1), day(2026, 11, 2)),
            ("2026-11-01T20:00-08:00", day(2026, 11, 1), day(2026, 11, 2)),
            ("2026-11-01T20:00:00PDT", day(2026, 11, 1), day(2026, 11, 2)),
            ("2026-11-01T24:00:00Z", day(2026, 11, 1), day(2026, 11, 2)),
            ("2026-11-01T24:00:00", day(2026, 11, 1), day(2026, 11, 2)),
            (
                "2026-11-02T01:00:00+0900",
                day(2026, 11, 2),
                day(2026, 11, 1),
            ),
        ];
        for (raw, old, new) in corrected {
            assert_eq!(lenient_purchase_date(raw), old, "{raw:?}: the old reading");
            assert_eq!(stored_purchase_date(raw), new, "{raw:?}");
        }
        // No date at all stays none (older builds let `2026-02-30` in).
        for raw in ["2026-02-30", "2026-02-30T10:00:00Z", "garbage", ""] {
            assert_eq!(stored_purchase_date(raw), None, "{raw:?}");
        }
    }

    /// The same instant spelled two ways is the same purchase-date (qa11 F6); values
    /// without a zone compare as text.
    #[test]
    fn same_purchase_date_compares_instants() {
        for (a, b) in [
            ("2026-11-30T10:15:00Z", "2026-11-30T10:15:00+00:00"),
            ("2026-11-30T10:15:00Z", "2026-11-30t10:15:00z"),
            ("2026-11-30T10:15:00Z", "2026-11-30 10:15:00 UTC"),
            ("2026-11-30T10:15:00Z", "2026-11-30T10:15Z"),
            ("2026-11-30T10:15:00Z", "2026-11-30T10:15:00.000Z"),
            ("2026-11-30T02:15:00-08:00", "2026-11-30T10:15:00Z"),
            ("2026-11-30T02:15:00 PST", "2026-11-30T02:15:00-0800"),
            ("2026-11-30T24:00:00Z", "2026-12-01T00:00:00Z"),
            ("2026-11-30", "2026-11-30"),
            ("2026-11-30 10:15:00", "2026-11-30 10:15:00"),
        ] {
            assert!(same_purchase_date(a, b), "{a:?} {b:?}");
            assert!(same_purchase_date(b, a), "{b:?} {a:?}");
        }
        for (a, b) in [
            ("2026-11-30T10:15:00Z", "2026-11-30T10:15:01Z"),
            ("2026-11-30T10:15:00Z", "2026-11-30T10:15:00.000000001Z"),
            ("2026-11-30T10:15:00Z", "2026-11-30T10:15:00 PST"),
            ("2026-11-30T23:59:60Z", "2026-12-01T00:00:00Z"),
            // Without a zone the instant is unknown: the text decides.
            ("2026-11-30T10:15:00", "2026-11-30 10:15:00"),
            ("2026-11-30T10:15:00", "2026-11-30T10:15:00Z"),
            ("2026-11-30", "2026-11-30T00:00:00Z"),
            ("2026-11-30", "2026-11-30T00:00:00"),
        ] {
            assert!(!same_purchase_date(a, b), "{a:?} {b:?}");
            assert!(!same_purchase_date(b, a), "{b:?} {a:?}");
        }
    }
}
