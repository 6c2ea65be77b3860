//! The canonical content digest of a feed: SHA-256 over its XML with what does not change
//! its meaning left out (the declaration, comments, processing instructions, whitespace
//! around text, attribute order, entity spelling, how numbers are written, namespace
//! declarations and prefixed attributes (the `xsi:` schema hints), `DocumentVersion`, the
//! order of the `Component`s in a list), so a re-exported file with the same adjustments has
//! the same digest. The idempotency keys of adjusted items without a
//! `MerchantAdjustmentItemID` are derived from it (refund-rules §c3.2). Each file also gets
//! the digest of the form earlier builds hashed, whose keys a store may hold
//! ([`Digests::earlier`]).
//!
//! This module does not judge the XML: a file it cannot read, or one past its limits, has no
//! digest (`None`), and the feed reader ([`crate::feed`]) reports what is wrong with it.

use std::io::{self, BufRead, BufReader, Read};

use quick_xml::events::Event;
use quick_xml::{Reader, XmlVersion};
use sha2::{Digest, Sha256};

use crate::model::Amount;

/// Text of one element kept at most; longer text means no digest (the reader's limits
/// reject such a feed anyway).
const MAX_TEXT: usize = 1 << 20;

/// Nesting kept at most, for the same reason.
const MAX_DEPTH: usize = 64;

/// Bytes between two markup delimiters (`<`, `>`) at most: a longer tag, text or comment
/// means no digest, before the XML reader buffers all of it.
const MAX_RUN: usize = 4 << 20;

/// The two content digests of a feed, hex SHA-256 each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digests {
    /// Of the current canonical form: also without namespace declarations and prefixed
    /// attributes (an exporter's `xsi:` schema hints, under any prefix), without
    /// `DocumentVersion`, and with the `Component`s of each adjustments list
    /// (`ItemPriceAdjustments`, `PromotionAdjustments`) in sorted order, which means the
    /// same adjustment as any other order.
    pub current: String,
    /// Of the form earlier builds hashed (version 1: everything in document order, only
    /// the spelling left out). The keys those builds derived for items without a
    /// `MerchantAdjustmentItemID` came from it, so a copy of a feed they processed is still
    /// recognised ([`crate::model::AdjustedItem::earlier_key`]).
    pub earlier: String,
}

/// The [`Digests`] of the XML read from `reader`, or `None` when it is not XML this module
/// can canonicalise.
pub fn content_digests<R: BufRead>(reader: R) -> Option<Digests> {
    let limited = RunLimit {
        inner: reader,
        run: 0,
    };
    let mut reader = Reader::from_reader(BufReader::with_capacity(1 << 16, limited));
    reader.config_mut().expand_empty_elements = true;
    let mut forms = Forms {
        earlier: Sha256::new(),
        current: Sha256::new(),
        components: None,
        component: None,
    };
    forms.current.update(b"adjustd-canonical-v2\n");
    let mut buf = Vec::new();
    let mut open: Vec<Vec<u8>> = Vec::new();
    let mut text = String::new();
    loop {
        match reader.read_event_into(&mut buf).ok()? {
            Event::Start(start) => {
                if open.len() == MAX_DEPTH {
                    return None;
                }
                let name = start.name().as_ref().as_bytes().to_vec();
                let mut attributes = Vec::new();
                for attribute in start.attributes() {
                    let attribute = attribute.ok()?;
                    let value = attribute.normalized_value(XmlVersion::Implicit1_0).ok()?;
                    attributes.push((attribute.key.as_ref().as_bytes().to_vec(), collapse(&value)));
                }
                attributes.sort();
                forms.start(&name);
                for (key, value) in &attributes {
                    // Namespace declarations and prefixed attributes (schema hints such as
                    // `xsi:noNamespaceSchemaLocation`, under whatever prefix) carry no
                    // adjustment: a feed's only attribute of meaning is `currency`.
                    let hint = key == b"xmlns" || key.contains(&b':');
                    forms.token(b'=', key, !hint);
                    forms.token(b'"', value.as_bytes(), !hint);
                }
                open.push(name);
                text.clear();
            }
            Event::End(_) => {
                let name = open.pop()?;
                forms.end(&name, canonical_text(&name, &text).as_bytes());
                text.clear();
            }
            Event::Text(raw) => text.push_str(&raw),
            Event::CData(raw) => text.push_str(&raw),
            Event::GeneralRef(reference) => {
                let resolved = match reference.resolve_char_ref().ok()? {
                    Some(c) => c,
                    None => match &*reference {
                        "amp" => '&',
                        "lt" => '<',
                        "gt" => '>',
                        "quot" => '"',
                        "apos" => '\'',
                        _ => return None,
                    },
                };
                text.push(resolved);
            }
            Event::DocType(_) => return None,
            Event::Eof => break,
            Event::Decl(_) | Event::Comment(_) | Event::PI(_) | Event::Empty(_) => {}
        }
        if text.len() > MAX_TEXT {
            return None;
        }
        buf.clear();
    }
    if !open.is_empty() {
        return None;
    }
    let hex = |hasher: Sha256| {
        hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    Some(Digests {
        current: hex(forms.current),
        earlier: hex(forms.earlier),
    })
}

/// Both canonical forms as they are hashed ([`Digests`]).
struct Forms {
    earlier: Sha256,
    current: Sha256,
    /// The components of the adjustments list being read, each as its tokens.
    components: Option<Vec<Vec<u8>>>,
    /// The tokens of the component being read.
    component: Option<Vec<u8>>,
}

impl Forms {
    /// A token of both forms, or (`current` false) of the earlier form only.
    fn token(&mut self, kind: u8, bytes: &[u8], current: bool) {
        token(&mut self.earlier, kind, bytes);
        if current {
            match &mut self.component {
                Some(tokens) => token(tokens, kind, bytes),
                None => token(&mut self.current, kind, bytes),
            }
        }
    }

    fn start(&mut self, name: &[u8]) {
        let local = local_name(name);
        if local == b"Component" && self.components.is_some() {
            self.component = Some(Vec::new());
        }
        self.token(b'<', name, local != b"DocumentVersion");
        if local.ends_with(b"Adjustments") {
            self.components = Some(Vec::new());
        }
    }

    fn end(&mut self, name: &[u8], text: &[u8]) {
        let local = local_name(name);
        if local.ends_with(b"Adjustments")
            && let Some(mut components) = self.components.take()
        {
            components.sort_unstable();
            for component in &components {
                token(&mut self.current, b'c', component);
            }
        }
        self.token(b'>', text, local != b"DocumentVersion");
        if local == b"Component"
            && let (Some(components), Some(tokens)) = (&mut self.components, self.component.take())
        {
            components.push(tokens);
        }
    }
}

/// Where tokens go: a hasher, or the bytes of a component held back for sorting.
trait Sink {
    fn put(&mut self, bytes: &[u8]);
}

impl Sink for Sha256 {
    fn put(&mut self, bytes: &[u8]) {
        self.update(bytes);
    }
}

impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

fn local_name(name: &[u8]) -> &[u8] {
    name.rsplit(|b| *b == b':').next().unwrap_or(name)
}

/// Fails the read once more than [`MAX_RUN`] bytes pass without a markup delimiter, so
/// memory stays bounded whatever the file holds.
struct RunLimit<R> {
    inner: R,
    /// Bytes since the last delimiter.
    run: usize,
}

impl<R: Read> Read for RunLimit<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let data = &buf[..n];
        match memchr::memrchr2(b'<', b'>', data) {
            Some(last) => {
                let first = memchr::memchr2(b'<', b'>', data).unwrap_or(last);
                let longest_inside = memchr::memchr2_iter(b'<', b'>', data)
                    .scan(first, |previous, at| {
                        let gap = at - *previous;
                        *previous = at;
                        Some(gap)
                    })
                    .max()
                    .unwrap_or(0);
                if self.run + first > MAX_RUN || longest_inside > MAX_RUN {
                    return Err(io::Error::other("markup run too long"));
                }
                self.run = n - last - 1;
            }
            None => self.run += n,
        }
        if self.run > MAX_RUN {
            return Err(io::Error::other("markup run too long"));
        }
        Ok(n)
    }
}

/// One token, framed by its kind and length so no two token sequences hash alike.
fn token(sink: &mut impl Sink, kind: u8, bytes: &[u8]) {
    sink.put(&[kind]);
    sink.put(&(bytes.len() as u64).to_le_bytes());
    sink.put(bytes);
}

/// XML whitespace trimmed and its inner runs collapsed to one space.
fn collapse(text: &str) -> String {
    text.split([' ', '\t', '\r', '\n'])
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The text of element `name` as its meaning: numbers in one spelling (`5.0` and `5.00`,
/// `007` and `7`), everything else with its whitespace collapsed.
fn canonical_text(name: &[u8], text: &str) -> String {
    let text = collapse(text);
    match local_name(name) {
        b"Amount" => Amount::parse(&text).map_or(text, |amount| amount.to_string()),
        b"MessageID" | b"QuantityCancelled" | b"Quantity" => {
            text.parse::<u64>().map_or(text, |n| n.to_string())
        }
        _ => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(xml: &str) -> Option<String> {
        content_digests(xml.as_bytes()).map(|digests| digests.current)
    }

    const FEED: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<AmazonEnvelope xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:noNamespaceSchemaLocation="amzn-envelope.xsd">
  <Header><DocumentVersion>1.01</DocumentVersion><MerchantIdentifier>M1</MerchantIdentifier></Header>
  <MessageType>OrderAdjustment</MessageType>
  <Message><MessageID>1</MessageID><OrderAdjustment><AmazonOrderID>111-1111111-1111111</AmazonOrderID>
    <AdjustedItem><AmazonOrderItemCode>12345678901234</AmazonOrderItemCode><AdjustmentReason>CustomerReturn</AdjustmentReason>
      <ItemPriceAdjustments><Component><Type>Principal</Type><Amount currency="USD">5.00</Amount></Component></ItemPriceAdjustments>
    </AdjustedItem></OrderAdjustment></Message>
</AmazonEnvelope>
"#;

    #[test]
    fn spelling_that_does_not_change_the_meaning_keeps_the_digest() {
        let base = digest(FEED).expect("digest");
        let variants = [
            FEED.replace("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n", ""),
            FEED.replace("5.00", "5.0"),
            FEED.replace("5.00", "\n   5\n"),
            FEED.replace("<MessageID>1<", "<MessageID>0001<"),
            FEED.replace("  <MessageType>", "<!-- exported again -->\n<MessageType>"),
            FEED.replace(
                r#"xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:noNamespaceSchemaLocation="amzn-envelope.xsd""#,
                r#"xsi:noNamespaceSchemaLocation="amzn-envelope.xsd"   xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance""#,
            ),
            FEED.replace("<Type>Principal</Type>", "<Type><![CDATA[Principal]]></Type>"),
            FEED.replace("CustomerReturn", "Customer&#82;eturn"),
            FEED.replace("\n", "\r\n"),
            // An exporter's schema hints and the document version.
            FEED.replace(
                r#" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:noNamespaceSchemaLocation="amzn-envelope.xsd""#,
                "",
            ),
            FEED.replace("<DocumentVersion>1.01<", "<DocumentVersion>1.02<"),
            FEED.replace("xmlns:xsi=", "xmlns:s=").replace("xsi:noNamespace", "s:noNamespace"),
        ];
        for variant in &variants {
            assert_eq!(digest(variant).as_ref(), Some(&base), "{variant}");
        }
    }

    #[test]
    fn the_components_of_an_adjustments_list_count_in_any_order() {
        let two = |first: &str, second: &str| {
            FEED.replace(
                r#"<Component><Type>Principal</Type><Amount currency="USD">5.00</Amount></Component>"#,
                &format!("{first}{second}"),
            )
        };
        let principal =
            r#"<Component><Type>Principal</Type><Amount currency="USD">5.00</Amount></Component>"#;
        let tax = r#"<Component><Type>Tax</Type><Amount currency="USD">0.40</Amount></Component>"#;
        let other_tax =
            r#"<Component><Type>Tax</Type><Amount currency="USD">0.41</Amount></Component>"#;
        assert_eq!(digest(&two(principal, tax)), digest(&two(tax, principal)));
        assert_ne!(
            digest(&two(principal, tax)),
            digest(&two(principal, other_tax))
        );
        // Components of different lists do not mix: a promotion is not a price component.
        let promotion = FEED.replace(
            "</ItemPriceAdjustments>",
            &format!("</ItemPriceAdjustments><PromotionAdjustments>{tax}</PromotionAdjustments>"),
        );
        let price = FEED.replace(
            "</Component></ItemPriceAdjustments>",
            &format!("</Component>{tax}</ItemPriceAdjustments>"),
        );
        assert_ne!(digest(&promotion), digest(&price));
    }

    #[test]
    fn the_earlier_digest_is_what_earlier_builds_derived_keys_from() {
        // Computed by the build before version 2 of the canonical form, from this FEED.
        const VERSION_1: &str = "da3c64e15211b63b7e69d382f4e786a2469b953f93e666c58982baab17027a42";
        let digests = content_digests(FEED.as_bytes()).expect("digests");
        assert_eq!(digests.earlier, VERSION_1);
        assert_ne!(digests.current, VERSION_1);
        // The earlier form kept the schema hints and the document version.
        let bare = FEED.replace("<DocumentVersion>1.01<", "<DocumentVersion>1.02<");
        assert_ne!(
            content_digests(bare.as_bytes()).expect("digests").earlier,
            VERSION_1
        );
    }

    #[test]
    fn any_change_of_content_changes_the_digest() {
        let base = digest(FEED).expect("digest");
        let changes = [
            FEED.replace("5.00", "5.01"),
            FEED.replace("<MessageID>1<", "<MessageID>2<"),
            FEED.replace("CustomerReturn", "NoInventory"),
            FEED.replace("currency=\"USD\"", "currency=\"EUR\""),
            FEED.replace("<MerchantIdentifier>M1<", "<MerchantIdentifier>M2<"),
            FEED.replace("12345678901234", "012345678901234"),
        ];
        for change in &changes {
            let changed = digest(change).expect("digest");
            assert_ne!(changed, base, "{change}");
        }
    }

    #[test]
    fn what_it_cannot_read_has_no_digest() {
        assert_eq!(digest(&FEED.replace("</AmazonEnvelope>", "")), None);
        assert_eq!(digest(&FEED.replace("<Header>", "<Header><")), None);
        assert_eq!(
            digest(&FEED.replace(
                "<AmazonEnvelope",
                "<!DOCTYPE x [<!ENTITY a \"b\">]>\n<AmazonEnvelope"
            )),
            None
        );
        assert_eq!(digest(&FEED.replace("Principal", "&custom;")), None);
        let long = FEED.replace("Principal", &"x".repeat(MAX_TEXT + 1));
        assert_eq!(digest(&long), None);
        // A run without markup longer than MAX_RUN stops the read itself (bounded memory),
        // in text, in an attribute and in a comment.
        for huge in [
            FEED.replace("Principal", &"x".repeat(MAX_RUN + 1)),
            FEED.replace(
                "currency=\"USD\"",
                &format!("currency=\"{}\"", "U".repeat(MAX_RUN + 1)),
            ),
            FEED.replace(
                "<MessageType>",
                &format!("<!--{}--><MessageType>", "c".repeat(MAX_RUN + 1)),
            ),
        ] {
            let mut limited = RunLimit {
                inner: huge.as_bytes(),
                run: 0,
            };
            assert!(io::copy(&mut limited, &mut io::sink()).is_err());
            assert_eq!(digest(&huge), None);
        }
        assert!(digest(&FEED.replace("Principal", &"x".repeat(MAX_TEXT))).is_some());
    }
}
