//! Escaping text into markup, shared by every document the API renders (SVG charts, the HTML
//! evidence report).

/// Text as XML or HTML character data or attribute value: markup characters escaped, and characters
/// XML 1.0 cannot carry (most control characters) replaced, so that a device's names (or any stored
/// text) can neither add markup nor break the document.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\t' | '\n' | '\r' => out.push(' '),
            c if c.is_control() || matches!(c, '\u{FFFE}' | '\u{FFFF}') => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}
