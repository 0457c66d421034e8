//! A small, strict XML reader for bmap files: elements, attributes, text, comments,
//! processing instructions, CDATA and the predefined and numeric character references.
//! No DTDs, namespaces or external entities (so nothing can make it fetch or expand anything).
//!
//! bmap files are a dozen fixed elements; a full XML library would be most of this crate's
//! code for no gain, and this one reports the line of every problem.

use crate::error::{FlashError, Result};

/// Deepest nesting accepted; bmap files use 3 levels.
const MAX_DEPTH: usize = 16;

/// An element with its attributes, child elements and concatenated text.
#[derive(Debug, Default)]
pub(crate) struct Element {
    pub name: String,
    pub attrs: Vec<(String, String)>,
    pub children: Vec<Element>,
    pub text: String,
    /// 1-based line of the start tag, for error messages.
    pub line: usize,
}

impl Element {
    /// The value of attribute `name`.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The first child element called `name`.
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }
}

/// Parses a whole document and returns its root element.
pub(crate) fn parse_document(text: &str) -> Result<Element> {
    let mut reader = Reader { text, pos: 0 };
    reader.skip_misc()?;
    if !reader.rest().starts_with('<') {
        return Err(reader.error("expected the root element"));
    }
    let root = reader.element(0)?;
    reader.skip_misc()?;
    if reader.pos != text.len() {
        return Err(reader.error("unexpected content after the root element"));
    }
    Ok(root)
}

struct Reader<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Reader<'a> {
    fn rest(&self) -> &'a str {
        &self.text[self.pos..]
    }

    fn line(&self) -> usize {
        1 + self.text[..self.pos].matches('\n').count()
    }

    fn error(&self, reason: &str) -> FlashError {
        FlashError::BmapXml {
            line: self.line(),
            reason: reason.to_string(),
        }
    }

    fn skip_whitespace(&mut self) {
        let rest = self.rest();
        self.pos += rest.len() - rest.trim_start().len();
    }

    /// Skips up to and including `end`, or fails naming `what` was left open.
    fn skip_past(&mut self, end: &str, what: &str) -> Result<()> {
        match self.rest().find(end) {
            Some(i) => {
                self.pos += i + end.len();
                Ok(())
            }
            None => Err(self.error(&format!("unterminated {what}"))),
        }
    }

    /// Whitespace, comments and processing instructions (the XML declaration among them)
    /// around the root element.
    fn skip_misc(&mut self) -> Result<()> {
        loop {
            self.skip_whitespace();
            let rest = self.rest();
            if rest.starts_with("<!--") {
                self.skip_past("-->", "comment")?;
            } else if rest.starts_with("<?") {
                self.skip_past("?>", "processing instruction")?;
            } else if rest.starts_with("<!") {
                return Err(self.error("DTDs and declarations are not accepted in a bmap file"));
            } else {
                return Ok(());
            }
        }
    }

    fn name(&mut self) -> Result<&'a str> {
        let rest = self.rest();
        let len = rest
            .find(|c: char| !(c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | ':')))
            .unwrap_or(rest.len());
        if len == 0 {
            return Err(self.error("expected a name"));
        }
        self.pos += len;
        Ok(&rest[..len])
    }

    /// Reads an element starting at `<`.
    fn element(&mut self, depth: usize) -> Result<Element> {
        if depth > MAX_DEPTH {
            return Err(self.error("elements nested too deeply"));
        }
        let line = self.line();
        self.pos += 1; // '<'
        let name = self.name()?.to_string();
        let mut element = Element {
            name,
            line,
            ..Element::default()
        };
        loop {
            self.skip_whitespace();
            let rest = self.rest();
            if rest.starts_with("/>") {
                self.pos += 2;
                return Ok(element);
            }
            if rest.starts_with('>') {
                self.pos += 1;
                break;
            }
            let attr = self.name()?.to_string();
            self.skip_whitespace();
            if !self.rest().starts_with('=') {
                return Err(self.error(&format!("expected '=' after attribute {attr}")));
            }
            self.pos += 1;
            self.skip_whitespace();
            let quote = match self.rest().chars().next() {
                Some(q @ ('"' | '\'')) => q,
                _ => return Err(self.error(&format!("attribute {attr} needs a quoted value"))),
            };
            self.pos += 1;
            let Some(len) = self.rest().find(quote) else {
                return Err(self.error(&format!("unterminated value of attribute {attr}")));
            };
            let raw = &self.rest()[..len];
            if raw.contains('<') {
                return Err(self.error(&format!("'<' in the value of attribute {attr}")));
            }
            let value = self.unescape(raw)?;
            self.pos += len + 1;
            if element.attr(&attr).is_some() {
                return Err(self.error(&format!("attribute {attr} given twice")));
            }
            element.attrs.push((attr, value));
        }
        // Content.
        loop {
            let rest = self.rest();
            if rest.is_empty() {
                return Err(self.error(&format!("element <{}> is not closed", element.name)));
            } else if rest.starts_with("</") {
                self.pos += 2;
                let end = self.name()?;
                if end != element.name {
                    return Err(self.error(&format!(
                        "</{end}> closes <{}> (opened on line {})",
                        element.name, element.line
                    )));
                }
                self.skip_whitespace();
                if !self.rest().starts_with('>') {
                    return Err(self.error(&format!("expected '>' after </{end}")));
                }
                self.pos += 1;
                return Ok(element);
            } else if rest.starts_with("<!--") {
                self.skip_past("-->", "comment")?;
            } else if let Some(cdata) = rest.strip_prefix("<![CDATA[") {
                let Some(len) = cdata.find("]]>") else {
                    return Err(self.error("unterminated CDATA section"));
                };
                element.text.push_str(&cdata[..len]);
                self.pos += "<![CDATA[".len() + len + 3;
            } else if rest.starts_with("<?") {
                self.skip_past("?>", "processing instruction")?;
            } else if rest.starts_with("<!") {
                return Err(self.error("declarations are not accepted inside elements"));
            } else if rest.starts_with('<') {
                let child = self.element(depth + 1)?;
                element.children.push(child);
            } else {
                let len = rest.find('<').unwrap_or(rest.len());
                let text = self.unescape(&rest[..len])?;
                element.text.push_str(&text);
                self.pos += len;
            }
        }
    }

    /// Replaces character and predefined entity references.
    fn unescape(&self, raw: &str) -> Result<String> {
        let mut out = String::with_capacity(raw.len());
        let mut rest = raw;
        while let Some(amp) = rest.find('&') {
            out.push_str(&rest[..amp]);
            let after = &rest[amp + 1..];
            let Some(semi) = after.find(';') else {
                return Err(self.error("'&' without a closing ';'"));
            };
            let entity = &after[..semi];
            let c = match entity {
                "lt" => Some('<'),
                "gt" => Some('>'),
                "amp" => Some('&'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                _ => {
                    let code = if let Some(hex) = entity.strip_prefix("#x") {
                        u32::from_str_radix(hex, 16).ok()
                    } else if let Some(dec) = entity.strip_prefix('#') {
                        dec.parse().ok()
                    } else {
                        None
                    };
                    code.and_then(char::from_u32)
                }
            };
            let Some(c) = c else {
                return Err(self.error(&format!("unknown entity &{entity};")));
            };
            out.push(c);
            rest = &after[semi + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_elements_attributes_text_and_skips_comments() {
        let doc = parse_document(
            "<?xml version=\"1.0\" ?>\n<!-- c -->\n<bmap version='2.0'>\n <A> 1 </A><!-- x -->\n \
             <B k=\"a&amp;b\">x&lt;<![CDATA[<y>]]>&#65;&#x42;</B><C/>\n</bmap>\n",
        )
        .unwrap();
        assert_eq!(doc.name, "bmap");
        assert_eq!(doc.attr("version"), Some("2.0"));
        assert_eq!(doc.child("A").unwrap().text, " 1 ");
        let b = doc.child("B").unwrap();
        assert_eq!(
            (b.attr("k"), b.text.as_str(), b.line),
            (Some("a&b"), "x<<y>AB", 5)
        );
        assert!(doc.child("C").is_some());
    }

    #[test]
    fn errors_carry_the_line() {
        for (doc, line) in [
            ("<a>\n<b>\n</a>", 3),
            ("<a>\n\n", 3),
            ("<a x=1></a>", 1),
            ("<a>&bogus;</a>", 1),
            ("<a></a>\n<b/>", 2),
            ("<!DOCTYPE a [<!ENTITY e \"x\">]><a/>", 1),
            ("<a x='1' x='2'/>", 1),
        ] {
            match parse_document(doc) {
                Err(FlashError::BmapXml { line: got, .. }) => assert_eq!(got, line, "{doc}"),
                other => panic!("{doc}: {other:?}"),
            }
        }
    }

    #[test]
    fn deep_nesting_is_refused() {
        let doc = format!("{}{}", "<a>".repeat(100), "</a>".repeat(100));
        assert!(parse_document(&doc).is_err());
    }
}
