//! Streaming reader of Qualys XML documents: elements arrive as start / leaf
//! end events while the body is still downloading, so no document is ever
//! held whole. The reader keeps the first bytes of the body so that a response
//! that is not the expected document fails with its first 200 characters.

use std::io;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::stream::{self, BoxStream, StreamExt};
use quick_xml::events::Event;
use tokio_util::io::StreamReader;

use aegis_shared::source_http::SourceResponse;

use crate::vendors::scanner::{excerpt, ScannerError};

/// Bytes of the body kept for error messages.
const PREFIX_BYTES: usize = 1024;

/// One parse step.
#[derive(Debug, PartialEq)]
pub enum XmlEvent {
    /// An element opened; `parent` is the element it is in.
    Start { name: String },
    /// An element closed with its (trimmed, unescaped) text; `parent` is the
    /// enclosing element after the close.
    End {
        name: String,
        parent: String,
        text: String,
    },
    /// The root element closed.
    Done,
}

/// A Qualys document being read from a response body.
pub struct XmlDoc {
    reader: quick_xml::Reader<StreamReader<BoxStream<'static, io::Result<Bytes>>, Bytes>>,
    buf: Vec<u8>,
    stack: Vec<String>,
    text: String,
    prefix: Vec<u8>,
    source_config: String,
    endpoint: String,
    root: &'static str,
    done: bool,
}

impl XmlDoc {
    /// Starts reading `response` (already checked for status), expecting `root`.
    /// A `SIMPLE_RETURN` root fails with Qualys' CODE and TEXT; any other
    /// root fails with the body's first 200 characters.
    pub async fn open(
        mut response: SourceResponse,
        source_config: &str,
        endpoint: &str,
        root: &'static str,
    ) -> Result<XmlDoc, ScannerError> {
        let mut prefix = Vec::new();
        let mut ended = false;
        while prefix.len() < PREFIX_BYTES {
            match response.chunk().await? {
                Some(c) => prefix.extend_from_slice(&c),
                None => {
                    ended = true;
                    break;
                }
            }
        }
        let head = stream::iter(vec![Ok(Bytes::from(prefix.clone()))]);
        let body: BoxStream<'static, io::Result<Bytes>> = if ended {
            head.boxed()
        } else {
            head.chain(stream::unfold(Some(response), |state| async move {
                let mut r = state?;
                match r.chunk().await {
                    Ok(Some(c)) => Some((Ok(c), Some(r))),
                    Ok(None) => None,
                    Err(e) => Some((Err(io::Error::other(e.to_string())), None)),
                }
            }))
            .boxed()
        };
        let mut reader = quick_xml::Reader::from_reader(StreamReader::new(body));
        reader.config_mut().expand_empty_elements = true;
        reader.config_mut().trim_text(true);
        let mut doc = XmlDoc {
            reader,
            buf: Vec::with_capacity(8 * 1024),
            stack: Vec::new(),
            text: String::new(),
            prefix,
            source_config: source_config.to_string(),
            endpoint: endpoint.to_string(),
            root,
            done: false,
        };
        match doc.next().await {
            Ok(XmlEvent::Start { name }) if name == root => Ok(doc),
            Ok(XmlEvent::Start { name }) if name == "SIMPLE_RETURN" => {
                Err(doc.simple_return().await)
            }
            Ok(XmlEvent::Start { name }) => {
                Err(doc.not_expected(format!("root element is <{name}>, expected <{root}>")))
            }
            Ok(_) => Err(doc.not_expected(format!("no <{root}> element"))),
            Err(e) => Err(e),
        }
    }

    /// The error for a document that is not what was expected.
    pub fn not_expected(&self, reason: impl Into<String>) -> ScannerError {
        ScannerError::Document {
            source_config: self.source_config.clone(),
            endpoint: self.endpoint.clone(),
            reason: reason.into(),
            excerpt: excerpt(&self.prefix),
        }
    }

    /// Reads a SIMPLE_RETURN's CODE and TEXT into an error.
    async fn simple_return(&mut self) -> ScannerError {
        let (mut code, mut text) = (String::new(), String::new());
        loop {
            match self.next().await {
                Ok(XmlEvent::End { name, text: t, .. }) if name == "CODE" => code = t,
                Ok(XmlEvent::End { name, text: t, .. }) if name == "TEXT" => text = t,
                Ok(XmlEvent::Done) | Err(_) => break,
                Ok(_) => {}
            }
        }
        if code.is_empty() && text.is_empty() {
            return self.not_expected("a SIMPLE_RETURN without CODE or TEXT");
        }
        ScannerError::Vendor {
            source_config: self.source_config.clone(),
            endpoint: self.endpoint.clone(),
            vendor: "Qualys",
            code,
            text,
        }
    }

    /// The next element event. Fails on malformed XML and on a body that ends
    /// before the root element closes.
    pub async fn next(&mut self) -> Result<XmlEvent, ScannerError> {
        if self.done {
            return Ok(XmlEvent::Done);
        }
        loop {
            self.buf.clear();
            let event = self.reader.read_event_into_async(&mut self.buf).await;
            let position = self.reader.buffer_position();
            let event = match event {
                Ok(e) => e,
                Err(e) => {
                    return Err(self.not_expected(format!("malformed XML at byte {position}: {e}")))
                }
            };
            match event {
                Event::Start(e) => {
                    let name = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
                    self.stack.push(name.clone());
                    self.text.clear();
                    return Ok(XmlEvent::Start { name });
                }
                Event::End(_) => {
                    let name = self.stack.pop().unwrap_or_default();
                    let text = std::mem::take(&mut self.text);
                    if self.stack.is_empty() {
                        self.done = true;
                        if name == self.root {
                            return Ok(XmlEvent::Done);
                        }
                    }
                    let parent = self.stack.last().cloned().unwrap_or_default();
                    return Ok(XmlEvent::End { name, parent, text });
                }
                Event::Text(t) => match t.unescape() {
                    Ok(s) => self.text.push_str(s.trim()),
                    Err(e) => {
                        return Err(self.not_expected(format!("bad text at byte {position}: {e}")))
                    }
                },
                Event::CData(c) => self
                    .text
                    .push_str(String::from_utf8_lossy(&c.into_inner()).trim()),
                Event::Eof => {
                    let reason = if self.stack.is_empty() {
                        "the body is empty or holds no element".to_string()
                    } else {
                        format!(
                            "the body ended inside <{}> (truncated)",
                            self.stack.join("/")
                        )
                    };
                    return Err(self.not_expected(reason));
                }
                // Declarations, DOCTYPE, comments, processing instructions.
                _ => {}
            }
        }
    }
}

/// A Qualys date-time (RFC 3339); empty or unparseable values are `None`
/// (real Qualys sends empty elements for unknown dates).
pub fn time(text: &str) -> Option<DateTime<Utc>> {
    if text.is_empty() {
        return None;
    }
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Reads the body of a failed response into an error quoting its start (and
/// Qualys' CODE/TEXT when it is a SIMPLE_RETURN).
pub async fn status_error(
    response: SourceResponse,
    source_config: &str,
    endpoint: &str,
) -> ScannerError {
    let status = response.status().as_u16();
    let body = match response.bytes().await {
        Ok(b) => b,
        Err(e) => return e.into(),
    };
    let text = String::from_utf8_lossy(&body);
    let tag = |t: &str| -> Option<String> {
        let open = format!("<{t}>");
        let start = text.find(&open)? + open.len();
        let end = text[start..].find(&format!("</{t}>"))? + start;
        Some(text[start..end].trim().to_string())
    };
    match (tag("CODE"), tag("TEXT")) {
        (Some(code), Some(text)) => ScannerError::Vendor {
            source_config: source_config.to_string(),
            endpoint: endpoint.to_string(),
            vendor: "Qualys",
            code,
            text: format!("{text} (HTTP {status})"),
        },
        _ => ScannerError::Status {
            source_config: source_config.to_string(),
            endpoint: endpoint.to_string(),
            status,
            excerpt: excerpt(&body),
        },
    }
}
