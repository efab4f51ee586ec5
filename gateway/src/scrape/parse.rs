//! A tolerant, allocation-free reader of the Prometheus text exposition format (0.0.4).
//!
//! The gateway scrapes every endpoint ten times a second and needs five or six numbers out of a
//! page of hundreds of samples, most of them histogram buckets. So the reader looks at each line's
//! metric name first and reads nothing else of a line nobody asked for; samples are handed out as
//! borrowed slices of the page, and a label value is unescaped only if it has escapes and someone
//! asks for it.
//!
//! Tolerant: a line it cannot read (a future syntax, a truncated last line, a UTF-8 quoted name) is
//! skipped, never an error for the whole page. A model server that adds an odd metric must not make
//! the gateway blind to its queue.

use std::borrow::Cow;

/// One sample line: `name{labels} value [timestamp]`, borrowed from the page.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample<'a> {
    pub name: &'a str,
    /// The text between the braces, still escaped; empty without labels.
    pub raw_labels: &'a str,
    pub value: f64,
    /// Milliseconds since the epoch, when the line has one.
    pub timestamp: Option<i64>,
}

impl<'a> Sample<'a> {
    /// The value of label `key`, unescaped (`\\`, `\"`, `\n`).
    pub fn label(&self, key: &str) -> Option<Cow<'a, str>> {
        self.labels()
            .find(|(k, _)| *k == key)
            .map(|(_, raw)| unescape(raw))
    }

    /// The labels as `(name, escaped value)` pairs.
    pub fn labels(&self) -> Labels<'a> {
        Labels {
            rest: self.raw_labels,
        }
    }
}

/// Iterator over `name="value"` pairs of a label set; stops at the first malformed pair.
#[derive(Clone, Debug)]
pub struct Labels<'a> {
    rest: &'a str,
}

impl<'a> Iterator for Labels<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        let rest = self.rest.trim_start_matches([' ', '\t', ',']);
        if rest.is_empty() {
            return None;
        }
        let eq = rest.find('=')?;
        let key = rest[..eq].trim();
        let after = rest[eq + 1..].trim_start();
        let body = after.strip_prefix('"')?;
        let end = closing_quote(body)?;
        self.rest = &body[end + 1..];
        Some((key, &body[..end]))
    }
}

/// Byte index of the first unescaped `"` in `s`.
fn closing_quote(s: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return Some(i),
            _ => i += 1,
        }
    }
    None
}

/// Unescapes a label value; borrows when there is nothing to unescape.
pub fn unescape(raw: &str) -> Cow<'_, str> {
    if !raw.contains('\\') {
        return Cow::Borrowed(raw);
    }
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    Cow::Owned(out)
}

/// Calls `each` for every readable sample whose metric name `wanted` accepts, in page order.
///
/// Most of a model server's page is histogram buckets: runs of lines with the same name. After
/// `wanted` refuses a name, the lines that start with that same name are skipped on a prefix
/// comparison, without scanning the name again or asking `wanted`.
pub fn parse_filtered<'a>(
    text: &'a str,
    mut wanted: impl FnMut(&str) -> bool,
    mut each: impl FnMut(Sample<'a>),
) {
    let mut refused: &str = "";
    for line in text.split('\n') {
        if !refused.is_empty()
            && line.starts_with(refused)
            && line
                .as_bytes()
                .get(refused.len())
                .is_none_or(|&b| !is_name_byte(b))
        {
            continue;
        }
        let Some((name, rest)) = split_name(line) else {
            continue;
        };
        if !wanted(name) {
            refused = name;
            continue;
        }
        if let Some(sample) = parse_rest(name, rest) {
            each(sample);
        }
    }
}

/// Every readable sample of the page.
pub fn parse(text: &str) -> impl Iterator<Item = Sample<'_>> {
    text.split('\n').filter_map(parse_line)
}

/// One line as a sample, or `None` for comments, blank lines and lines it cannot read.
pub fn parse_line(line: &str) -> Option<Sample<'_>> {
    let (name, rest) = split_name(line)?;
    parse_rest(name, rest)
}

/// The metric name at the start of a sample line and the text after it.
fn split_name(line: &str) -> Option<(&str, &str)> {
    let line = line.trim_start_matches([' ', '\t']);
    let bytes = line.as_bytes();
    let first = *bytes.first()?;
    if !is_name_byte(first) || first.is_ascii_digit() {
        // Comments (`#`), blank lines, and names this reader does not know how to read.
        return None;
    }
    let end = bytes
        .iter()
        .position(|&b| !is_name_byte(b))
        .unwrap_or(bytes.len());
    Some((&line[..end], &line[end..]))
}

/// `[a-zA-Z0-9_:]`, by table: the name scan is the inner loop of reading a page.
fn is_name_byte(b: u8) -> bool {
    const TABLE: [bool; 256] = {
        let mut t = [false; 256];
        let mut i = 0;
        while i < 256 {
            let c = i as u8;
            t[i] = c.is_ascii_alphanumeric() || c == b'_' || c == b':';
            i += 1;
        }
        t
    };
    TABLE[usize::from(b)]
}

fn parse_rest<'a>(name: &'a str, rest: &'a str) -> Option<Sample<'a>> {
    let rest = rest.trim_start_matches([' ', '\t']);
    let (raw_labels, rest) = match rest.strip_prefix('{') {
        Some(inner) => {
            let end = closing_brace(inner)?;
            (&inner[..end], &inner[end + 1..])
        }
        None => ("", rest),
    };
    let mut tokens = rest.split_ascii_whitespace();
    let value = parse_value(tokens.next()?)?;
    let timestamp = tokens.next().and_then(|t| t.parse::<i64>().ok());
    Some(Sample {
        name,
        raw_labels,
        value,
        timestamp,
    })
}

/// Byte index of the `}` that closes a label set, skipping braces inside quoted values.
fn closing_brace(s: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut quoted = false;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if quoted => i += 1,
            b'"' => quoted = !quoted,
            b'}' if !quoted => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

/// A sample value: Go's float syntax plus `NaN`, `+Inf`, `-Inf`.
fn parse_value(token: &str) -> Option<f64> {
    match token {
        "NaN" => Some(f64::NAN),
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ => token.parse::<f64>().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_names_labels_values_and_timestamps() {
        let page = "# HELP x Help text with \"quotes\".\n\
                    # TYPE x gauge\n\
                    x 1\n\
                    y_total{a=\"1\",b=\"two words\"} 2.5e3 1700000000000\n\
                    z{le=\"+Inf\"} +Inf\n\
                    n NaN\n\
                    m{} -Inf\n\
                    \n";
        let s: Vec<_> = parse(page).collect();
        assert_eq!(s.len(), 5);
        assert_eq!((s[0].name, s[0].value, s[0].timestamp), ("x", 1.0, None));
        assert_eq!(s[1].value, 2500.0);
        assert_eq!(s[1].timestamp, Some(1_700_000_000_000));
        assert_eq!(s[1].label("b").as_deref(), Some("two words"));
        assert_eq!(s[1].label("c"), None);
        assert_eq!(s[2].value, f64::INFINITY);
        assert_eq!(s[2].label("le").as_deref(), Some("+Inf"));
        assert!(s[3].value.is_nan());
        assert_eq!(s[4].value, f64::NEG_INFINITY);
    }

    #[test]
    fn escaped_quotes_and_braces_in_label_values() {
        let line = r#"info{path="C:\\dir",msg="say \"hi\" {x}",nl="a\nb",} 1"#;
        let s = parse_line(line).expect("readable");
        assert_eq!(s.label("path").as_deref(), Some(r"C:\dir"));
        assert_eq!(s.label("msg").as_deref(), Some(r#"say "hi" {x}"#));
        assert_eq!(s.label("nl").as_deref(), Some("a\nb"));
        assert_eq!(s.value, 1.0);
    }

    #[test]
    fn skips_what_it_cannot_read() {
        let page = "good 1\n\
                    bad{unterminated=\"x} 1\n\
                    {\"utf8.name\"} 3\n\
                    novalue\n\
                    word notanumber\n\
                    also_good{a=\"b\"} 2 # {trace_id=\"x\"} 1\n\
                    trunc";
        let names: Vec<_> = parse(page).map(|s| (s.name, s.value)).collect();
        assert_eq!(names, vec![("good", 1.0), ("also_good", 2.0)]);
    }

    #[test]
    fn refused_names_skip_their_runs_but_not_longer_names() {
        let page =
            "h_bucket{le=\"1\"} 1\nh_bucket{le=\"2\"} 2\nh_bucket_extra 3\nh_bucket 4\nh_sum 5\n";
        let mut asked = Vec::new();
        let mut got = Vec::new();
        parse_filtered(
            page,
            |n| {
                asked.push(n.to_string());
                n != "h_bucket"
            },
            |s| got.push(s.value),
        );
        assert_eq!(asked, vec!["h_bucket", "h_bucket_extra", "h_sum"]);
        assert_eq!(got, vec![3.0, 5.0]);
    }

    #[test]
    fn windows_line_endings_and_indentation() {
        let page = "a 1\r\n  b{x=\"y\"} 2\r\n";
        let got: Vec<_> = parse(page).map(|s| (s.name, s.value)).collect();
        assert_eq!(got, vec![("a", 1.0), ("b", 2.0)]);
    }

    #[test]
    fn filter_sees_every_name_but_parses_only_wanted() {
        let page = "a 1\nb 2\nc 3\n";
        let mut asked = Vec::new();
        let mut got = Vec::new();
        parse_filtered(
            page,
            |n| {
                asked.push(n.to_string());
                n == "b"
            },
            |s| got.push(s.value),
        );
        assert_eq!(asked, vec!["a", "b", "c"]);
        assert_eq!(got, vec![2.0]);
    }
}
