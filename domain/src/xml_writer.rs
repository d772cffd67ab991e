//! A small XML writer: nested elements with attributes and text, every value escaped.
//!
//! Hand-written rather than serde with `quick-xml`: libvirt's format mixes attributes, text and child elements in
//! ways serde's attribute naming conventions express poorly, and about a hundred lines need no dependency. Values
//! are never pasted into markup: each goes through [`XmlWriter::escape`], and characters XML cannot carry at all
//! make [`XmlWriter::finish`] fail instead of producing a document libvirt would reject or misread.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum XmlError {
    /// A value holds a character XML 1.0 cannot represent, not even as a character reference.
    #[error("a value contains U+{:04X}, which XML cannot carry", u32::from(*.0))]
    ForbiddenChar(char),
    /// libvirt's XML is UTF-8, so every path must be.
    #[error("path {} is not UTF-8", .0.display())]
    NonUtf8Path(PathBuf),
}

/// One attribute: a name fixed by the schema, a value that gets escaped.
pub type Attr<'a> = (&'static str, &'a str);

const INDENT: &str = "  ";

#[derive(Default)]
pub struct XmlWriter {
    out: String,
    open: Vec<&'static str>,
    error: Option<XmlError>,
}

impl XmlWriter {
    pub fn new() -> XmlWriter {
        XmlWriter::default()
    }

    /// Opens an element whose children follow; [`XmlWriter::close`] ends it.
    pub fn open(&mut self, name: &'static str, attrs: &[Attr<'_>]) {
        self.start_tag(name, attrs);
        self.out.push_str(">\n");
        self.open.push(name);
    }

    /// Writes an element without content: `<name a="v"/>`.
    pub fn empty(&mut self, name: &'static str, attrs: &[Attr<'_>]) {
        self.start_tag(name, attrs);
        self.out.push_str("/>\n");
    }

    /// Writes an element holding only text: `<name a="v">text</name>`.
    pub fn text(&mut self, name: &'static str, attrs: &[Attr<'_>], text: &str) {
        self.start_tag(name, attrs);
        self.out.push('>');
        self.escape(text);
        let _ = writeln!(self.out, "</{name}>");
    }

    /// Ends the element opened last.
    pub fn close(&mut self) {
        let name = self.open.pop().expect("close() without a matching open()");
        self.indent();
        let _ = writeln!(self.out, "</{name}>");
    }

    /// A path as a value; a path that is not UTF-8 fails the document.
    pub fn path<'p>(&mut self, path: &'p Path) -> Cow<'p, str> {
        match path.to_str() {
            Some(text) => Cow::Borrowed(text),
            None => {
                self.fail(XmlError::NonUtf8Path(path.to_owned()));
                path.to_string_lossy()
            }
        }
    }

    /// The document, or the first value that could not be written.
    pub fn finish(self) -> Result<String, XmlError> {
        assert!(self.open.is_empty(), "elements left open: {:?}", self.open);
        match self.error {
            Some(error) => Err(error),
            None => Ok(self.out),
        }
    }

    fn start_tag(&mut self, name: &'static str, attrs: &[Attr<'_>]) {
        self.indent();
        self.out.push('<');
        self.out.push_str(name);
        for (attr, value) in attrs {
            self.out.push(' ');
            self.out.push_str(attr);
            self.out.push_str("=\"");
            self.escape(value);
            self.out.push('"');
        }
    }

    fn indent(&mut self) {
        for _ in 0..self.open.len() {
            self.out.push_str(INDENT);
        }
    }

    /// Escapes a value for use in text and in double-quoted attributes alike. Tab, newline and carriage return
    /// become character references so that attribute-value normalization cannot turn them into spaces.
    fn escape(&mut self, value: &str) {
        for ch in value.chars() {
            match ch {
                '&' => self.out.push_str("&amp;"),
                '<' => self.out.push_str("&lt;"),
                '>' => self.out.push_str("&gt;"),
                '"' => self.out.push_str("&quot;"),
                '\'' => self.out.push_str("&apos;"),
                '\t' | '\n' | '\r' => {
                    let _ = write!(self.out, "&#{};", u32::from(ch));
                }
                _ if is_forbidden(ch) => self.fail(XmlError::ForbiddenChar(ch)),
                _ => self.out.push(ch),
            }
        }
    }

    fn fail(&mut self, error: XmlError) {
        self.error.get_or_insert(error);
    }
}

/// Characters outside XML 1.0's `Char` production (Rust's `char` already excludes surrogates).
fn is_forbidden(ch: char) -> bool {
    matches!(ch, '\0'..='\u{8}' | '\u{b}' | '\u{c}' | '\u{e}'..='\u{1f}' | '\u{fffe}' | '\u{ffff}')
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;

    use super::*;

    #[test]
    fn nests_and_indents() {
        let mut w = XmlWriter::new();
        w.open("domain", &[("type", "qemu")]);
        w.text("name", &[], "vm");
        w.empty("acpi", &[]);
        w.close();
        assert_eq!(
            w.finish().unwrap(),
            "<domain type=\"qemu\">\n  <name>vm</name>\n  <acpi/>\n</domain>\n"
        );
    }

    #[test]
    fn escapes_markup_in_text_and_attributes() {
        let hostile = "a\"b'c<d>e&f</cmdline><evil/>";
        let mut w = XmlWriter::new();
        w.open("root", &[("attr", hostile)]);
        w.text("cmdline", &[], hostile);
        w.close();
        let xml = w.finish().unwrap();
        let doc = roxmltree::Document::parse(&xml).unwrap();
        let root = doc.root_element();
        assert_eq!(root.attribute("attr"), Some(hostile));
        assert_eq!(root.first_element_child().unwrap().text(), Some(hostile));
        assert_eq!(root.children().filter(|n| n.is_element()).count(), 1);
    }

    #[test]
    fn whitespace_in_attributes_survives_normalization() {
        let value = "one\ttwo\nthree\r";
        let mut w = XmlWriter::new();
        w.empty("e", &[("v", value)]);
        let xml = w.finish().unwrap();
        let doc = roxmltree::Document::parse(&xml).unwrap();
        assert_eq!(doc.root_element().attribute("v"), Some(value));
    }

    #[test]
    fn control_characters_fail_the_document() {
        let mut w = XmlWriter::new();
        w.text("cmdline", &[], "console=ttyS0\u{1b}[2J");
        assert_eq!(w.finish(), Err(XmlError::ForbiddenChar('\u{1b}')));

        let mut w = XmlWriter::new();
        w.text("name", &[], "nul\0");
        assert_eq!(w.finish(), Err(XmlError::ForbiddenChar('\0')));
    }

    #[test]
    fn non_utf8_paths_fail_the_document() {
        let path = Path::new(OsStr::from_bytes(b"/var/lib/disk-\xff.qcow2"));
        let mut w = XmlWriter::new();
        let value = w.path(path);
        w.empty("source", &[("file", &value)]);
        assert_eq!(w.finish(), Err(XmlError::NonUtf8Path(path.to_owned())));
    }
}
