//! Reading the XML files the flasher takes in, bmap files and NVIDIA's flash layouts, with
//! `roxmltree`: read-only, DTDs refused (so no entity can be declared, expanded or fetched),
//! and every error and node with its 1-based line for messages. Writing stays with each
//! format (`Bmap::to_xml`), as plain text.

use std::ops::Range;

pub use roxmltree::{Document, Node};
use roxmltree::{Error, ParsingOptions, TextPos};

/// A document that is not well-formed XML, or that has a DTD.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct XmlError {
    /// 1-based line of the problem.
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

/// Parses a whole document; a DTD (`<!DOCTYPE ... [...]>`) is an error.
pub fn parse(text: &str) -> Result<Document<'_>, XmlError> {
    let options = ParsingOptions {
        allow_dtd: false,
        ..ParsingOptions::default()
    };
    Document::parse_with_options(text, options).map_err(|e| XmlError {
        line: error_line(text, &e),
        reason: reason(&e),
    })
}

/// The 1-based line where `node` starts.
pub fn line(node: Node<'_, '_>) -> usize {
    line_at(node.document(), node.range())
}

/// The first child element of `node` called `name`.
pub fn child<'a, 'input>(node: Node<'a, 'input>, name: &str) -> Option<Node<'a, 'input>> {
    node.children().find(|c| c.has_tag_name(name))
}

/// The text directly inside `node` (CDATA included, comments and child elements left out),
/// untrimmed.
pub fn text(node: Node<'_, '_>) -> String {
    node.children()
        .filter(Node::is_text)
        .filter_map(|c| c.text())
        .collect()
}

fn line_at(doc: &Document<'_>, range: Range<usize>) -> usize {
    doc.text_pos_at(range.start).row as usize
}

/// Where an error is. roxmltree gives 1:1 to the errors it does not place; those are placed
/// here: an unclosed element at the end of the text, a DTD at its `<!DOCTYPE`.
fn error_line(text: &str, e: &Error) -> usize {
    let line_of = |byte: usize| 1 + text[..byte].matches('\n').count();
    match e {
        Error::UnclosedRootNode | Error::UnexpectedEndOfStream => line_of(text.len()),
        Error::DtdDetected => line_of(text.find("<!DOCTYPE").unwrap_or(0)),
        other => {
            let TextPos { row, .. } = other.pos();
            row as usize
        }
    }
}

/// roxmltree's message without its own position (the line is reported separately).
fn reason(e: &Error) -> String {
    match e {
        Error::DtdDetected => {
            "DTDs (<!DOCTYPE> with declarations) are not accepted: nothing may declare or \
             expand entities"
                .to_string()
        }
        Error::UnclosedRootNode | Error::UnexpectedEndOfStream => {
            "the document ends before its elements are closed".to_string()
        }
        other => other
            .to_string()
            .replacen(&format!(" at {}", other.pos()), "", 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_elements_attributes_text_and_skips_comments() {
        let doc = parse(
            "<?xml version=\"1.0\" ?>\n<!-- c -->\n<bmap version='2.0'>\n <A> 1 </A><!-- x -->\n \
             <B k=\"a&amp;b\">x&lt;<!-- split -->\
             <![CDATA[<y>]]>&#65;&#x42;</B><C/>\n</bmap>\n",
        )
        .unwrap();
        let root = doc.root_element();
        assert_eq!(root.tag_name().name(), "bmap");
        assert_eq!(root.attribute("version"), Some("2.0"));
        assert_eq!(text(child(root, "A").unwrap()), " 1 ");
        let b = child(root, "B").unwrap();
        assert_eq!(
            (b.attribute("k"), text(b).as_str(), line(b)),
            (Some("a&b"), "x<<y>AB", 5)
        );
        assert!(child(root, "C").is_some());
        assert!(child(root, "D").is_none());
    }

    #[test]
    fn errors_carry_the_line() {
        for (doc, line) in [
            ("<a>\n<b>\n</a>", 3),
            ("<a>\n\n", 3),
            ("<a x=1></a>", 1),
            ("<a>&bogus;</a>", 1),
            ("<a></a>\n<b/>", 2),
            ("<a x='1' x='2'/>", 1),
            (
                "<?xml version='1.0'?>\n<!DOCTYPE a [<!ENTITY e \"x\">]><a>&e;</a>",
                2,
            ),
        ] {
            match parse(doc) {
                Err(e) => assert_eq!(e.line, line, "{doc}: {e}"),
                Ok(_) => panic!("{doc} was accepted"),
            }
        }
    }

    #[test]
    fn entity_declarations_are_refused_not_expanded() {
        // The classic expansion bomb and an external entity: both stop at the DTD.
        let bomb = "<!DOCTYPE a [\n<!ENTITY x \"xxxxxxxx\">\n<!ENTITY y \"&x;&x;&x;&x;\">\n]>\n\
                    <a>&y;</a>";
        let external = "<!DOCTYPE a [<!ENTITY e SYSTEM \"file:///etc/passwd\">]><a>&e;</a>";
        for doc in [bomb, external] {
            let err = parse(doc).unwrap_err();
            assert_eq!(err.line, 1, "{err}");
            assert!(err.reason.contains("DTDs"), "{err}");
        }
    }

    #[test]
    fn reasons_do_not_repeat_the_position() {
        let err = parse("<a>\n<b>\n</a>").unwrap_err();
        assert!(!err.reason.contains(" at 3:"), "{err}");
        assert!(err.reason.contains("'b'"), "{err}");
    }

    #[test]
    fn deep_nesting_is_read_without_recursion_limits() {
        let doc = format!("{}{}", "<a>".repeat(10_000), "</a>".repeat(10_000));
        assert_eq!(parse(&doc).unwrap().descendants().count(), 10_001);
    }
}
