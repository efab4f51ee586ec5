//! The Azure LLM inference trace format: `TIMESTAMP,ContextTokens,GeneratedTokens`.
//!
//! Published by Microsoft in the AzurePublicDataset (Patel et al., "Splitwise", ISCA 2024); a copy
//! of the one-hour conversation trace ships in `loadtest/traces/`. Timestamps look like
//! `2023-11-16 18:15:46.6805900` (UTC wall time, up to 7 fractional digits); a plain number of
//! seconds is accepted too, so small hand-written traces are easy. Only offsets matter: each record's
//! arrival is its timestamp minus the earliest one.

use std::time::Duration;

/// One request of a trace.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TraceRecord {
    /// Arrival, relative to the trace's first request.
    pub offset: Duration,
    /// Prompt length in tokens.
    pub input_tokens: u32,
    /// Output length in tokens.
    pub output_tokens: u32,
}

/// Why a trace cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The file cannot be read.
    #[error("reading trace {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A line does not parse.
    #[error("trace line {line}: {message}")]
    Parse {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// No records.
    #[error("the trace holds no requests")]
    Empty,
}

/// Reads and parses a trace file.
pub fn read_azure_csv(path: &std::path::Path) -> Result<Vec<TraceRecord>, TraceError> {
    let text = std::fs::read_to_string(path).map_err(|source| TraceError::Io {
        path: path.display().to_string(),
        source,
    })?;
    parse_azure_csv(&text)
}

/// Parses the CSV text; records come back sorted by arrival, offsets from the earliest.
pub fn parse_azure_csv(text: &str) -> Result<Vec<TraceRecord>, TraceError> {
    let mut raw: Vec<(f64, u32, u32)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let err = |message: String| TraceError::Parse {
            line: line_no,
            message,
        };
        let mut fields = line.split(',').map(str::trim);
        let (Some(ts), Some(ctx), Some(gen_), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err(err(format!("expected 3 fields, got {line:?}")));
        };
        if i == 0 && ts.eq_ignore_ascii_case("timestamp") {
            continue; // header
        }
        let t = parse_timestamp(ts).ok_or_else(|| err(format!("bad timestamp {ts:?}")))?;
        let input: u32 = ctx
            .parse()
            .map_err(|_| err(format!("bad ContextTokens {ctx:?}")))?;
        let output: u32 = gen_
            .parse()
            .map_err(|_| err(format!("bad GeneratedTokens {gen_:?}")))?;
        raw.push((t, input, output));
    }
    if raw.is_empty() {
        return Err(TraceError::Empty);
    }
    raw.sort_by(|a, b| a.0.total_cmp(&b.0));
    let t0 = raw[0].0;
    Ok(raw
        .into_iter()
        .map(|(t, input_tokens, output_tokens)| TraceRecord {
            offset: Duration::from_secs_f64(t - t0),
            input_tokens,
            output_tokens,
        })
        .collect())
}

/// Mean arrival rate of a trace in requests per second (None for a single instant).
pub fn native_rate(records: &[TraceRecord]) -> Option<f64> {
    let span = records.last()?.offset.as_secs_f64() - records.first()?.offset.as_secs_f64();
    (span > 0.0 && records.len() > 1).then(|| (records.len() - 1) as f64 / span)
}

/// Seconds since the Unix epoch for `YYYY-MM-DD HH:MM:SS[.fraction]` (or `T` between), or a plain
/// number of seconds.
fn parse_timestamp(s: &str) -> Option<f64> {
    if let Ok(secs) = s.parse::<f64>() {
        return secs.is_finite().then_some(secs);
    }
    let (date, time) = s.split_once([' ', 'T'])?;
    let time = time.trim_end_matches('Z');
    let mut d = date.splitn(3, '-');
    let (y, m, day): (i64, u32, u32) = (
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
    );
    let mut t = time.splitn(3, ':');
    let (h, min): (u32, u32) = (t.next()?.parse().ok()?, t.next()?.parse().ok()?);
    let sec: f64 = t.next()?.parse().ok()?;
    if !(1..=12).contains(&m)
        || !(1..=31).contains(&day)
        || h > 23
        || min > 59
        || !(0.0..61.0).contains(&sec)
    {
        return None;
    }
    let days = days_from_civil(y, m, day);
    Some(days as f64 * 86_400.0 + f64::from(h * 3600 + min * 60) + sec)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_tiny_inline_trace() {
        let csv = "TIMESTAMP,ContextTokens,GeneratedTokens\n\
                   2023-11-16 18:15:47.5,10,3\n\
                   2023-11-16 18:15:46.0000000,374,44\n\
                   2023-11-16 18:16:46.25,5,1\n";
        let r = parse_azure_csv(csv).unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].offset, Duration::ZERO);
        assert_eq!((r[0].input_tokens, r[0].output_tokens), (374, 44));
        assert_eq!(r[1].offset, Duration::from_millis(1500));
        assert_eq!(r[2].offset, Duration::from_millis(60_250));
        assert!((native_rate(&r).unwrap() - 2.0 / 60.25).abs() < 1e-9);
    }

    #[test]
    fn crosses_midnight_and_month_ends() {
        let a = parse_timestamp("2023-12-31 23:59:59.5").unwrap();
        let b = parse_timestamp("2024-01-01 00:00:00.5").unwrap();
        assert!((b - a - 1.0).abs() < 1e-6);
        assert_eq!(parse_timestamp("1970-01-01 00:00:00"), Some(0.0));
        assert_eq!(parse_timestamp("12.5"), Some(12.5));
        assert_eq!(parse_timestamp("2023-13-01 00:00:00"), None);
        assert_eq!(parse_timestamp("yesterday"), None);
    }

    #[test]
    fn reports_bad_lines_with_their_number() {
        let e =
            parse_azure_csv("TIMESTAMP,ContextTokens,GeneratedTokens\n1,2,3\n2,x,3\n").unwrap_err();
        assert!(matches!(e, TraceError::Parse { line: 3, .. }), "{e}");
        assert!(matches!(
            parse_azure_csv("1,2\n"),
            Err(TraceError::Parse { line: 1, .. })
        ));
        assert!(matches!(
            parse_azure_csv("TIMESTAMP,a,b\n"),
            Err(TraceError::Empty)
        ));
    }

    #[test]
    fn parses_the_shipped_azure_conversation_trace() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("traces/azure-llm-2023-conv.csv");
        let r = read_azure_csv(&path).unwrap();
        assert_eq!(r.len(), 19_366);
        let n = r.len() as f64;
        let mean_in = r.iter().map(|x| f64::from(x.input_tokens)).sum::<f64>() / n;
        let mean_out = r.iter().map(|x| f64::from(x.output_tokens)).sum::<f64>() / n;
        assert!((mean_in - 1155.0).abs() < 5.0, "{mean_in}");
        assert!((mean_out - 211.0).abs() < 2.0, "{mean_out}");
        // One hour of arrivals, about 5.4 requests a second.
        let span = r.last().unwrap().offset.as_secs_f64();
        assert!((3500.0..3700.0).contains(&span), "{span}");
        assert!(r.windows(2).all(|w| w[0].offset <= w[1].offset));
    }
}
