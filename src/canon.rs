//! The canonical content digest of a feed: SHA-256 over its XML with what does not change
//! its meaning left out (the declaration, comments, processing instructions, whitespace
//! around text, attribute order, entity spelling, how numbers are written), so a re-exported
//! file with the same adjustments has the same digest. The idempotency keys of adjusted
//! items without a `MerchantAdjustmentItemID` are derived from it (refund-rules §c3.2).
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

/// The hex SHA-256 of the canonical form of the XML read from `reader`, or `None` when it
/// is not XML this module can canonicalise.
pub fn content_digest<R: BufRead>(reader: R) -> Option<String> {
    let limited = RunLimit {
        inner: reader,
        run: 0,
    };
    let mut reader = Reader::from_reader(BufReader::with_capacity(1 << 16, limited));
    reader.config_mut().expand_empty_elements = true;
    let mut hasher = Sha256::new();
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
                token(&mut hasher, b'<', &name);
                for (key, value) in &attributes {
                    token(&mut hasher, b'=', key);
                    token(&mut hasher, b'"', value.as_bytes());
                }
                open.push(name);
                text.clear();
            }
            Event::End(_) => {
                let name = open.pop()?;
                token(&mut hasher, b'>', canonical_text(&name, &text).as_bytes());
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
    Some(
        hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    )
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
fn token(hasher: &mut Sha256, kind: u8, bytes: &[u8]) {
    hasher.update([kind]);
    hasher.update((bytes.len() as u64).to_le_bytes());
    hasher.update(bytes);
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
    let local = name.rsplit(|b| *b == b':').next().unwrap_or(name);
    match local {
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
        content_digest(xml.as_bytes())
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
        ];
        for variant in &variants {
            assert_eq!(digest(variant).as_ref(), Some(&base), "{variant}");
        }
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
