//! Error classification and `retry-after` decoding.

use crate::protocols::event::Headers;

/// Error type of a refused call from its status and the body's error
/// `type`/`code` (any provider's spelling).
pub(crate) fn classify(status: u16, kind: Option<&str>, code: Option<&str>) -> String {
    let is = |s: &str| kind == Some(s) || code == Some(s);
    if is("insufficient_quota") {
        return "insufficient_quota".into();
    }
    if status == 529 || is("overloaded_error") {
        return "overloaded".into();
    }
    match status {
        429 => "rate_limited".into(),
        401 | 403 => "auth".into(),
        400 | 404 | 422 => "invalid_request".into(),
        408 | 504 => "timeout".into(),
        500..=599 => "server_error".into(),
        _ => match kind.or(code) {
            Some(k) => classify_stream_error(k),
            None => "client_error".into(),
        },
    }
}

/// Error type of an error reported inside a 200 stream.
pub(crate) fn classify_stream_error(kind: &str) -> String {
    match kind {
        "overloaded_error" => "overloaded".into(),
        "rate_limit_error" | "rate_limit_exceeded" | "RESOURCE_EXHAUSTED" => "rate_limited".into(),
        "insufficient_quota" => "insufficient_quota".into(),
        "api_error" | "server_error" | "INTERNAL" | "UNAVAILABLE" => "server_error".into(),
        "authentication_error" | "permission_error" => "auth".into(),
        "invalid_request_error" | "not_found_error" | "INVALID_ARGUMENT" => {
            "invalid_request".into()
        }
        other => other.chars().take(64).collect(),
    }
}

/// Seconds to wait from `retry-after-ms`, `retry-after` (seconds or an
/// HTTP-date taken relative to the response's own `date` header).
pub(crate) fn retry_after_s(headers: &Headers) -> Option<f64> {
    if let Some(ms) = headers.get("retry-after-ms").and_then(parse_seconds) {
        return Some(ms / 1000.0);
    }
    let value = headers.get("retry-after")?;
    if let Some(s) = parse_seconds(value) {
        return Some(s);
    }
    let at = http_date(value)?;
    let now = http_date(headers.get("date")?)?;
    Some((at - now).max(0) as f64)
}

fn parse_seconds(value: &str) -> Option<f64> {
    let v: f64 = value.trim().parse().ok()?;
    (v.is_finite() && v >= 0.0).then_some(v)
}

/// Seconds since the Unix epoch of an HTTP-date in any of the three forms of
/// RFC 9110 (IMF-fixdate, RFC 850, asctime).
pub(crate) fn http_date(value: &str) -> Option<i64> {
    let mut day = None;
    let mut month = None;
    let mut year = None;
    let mut time = None;
    for token in value.split([' ', ',', '-']).filter(|t| !t.is_empty()) {
        if token.contains(':') {
            let mut parts = token.split(':').map(|p| p.parse::<i64>().ok());
            let (h, m, s) = (parts.next()??, parts.next()??, parts.next()??);
            if h > 23 || m > 59 || s > 60 {
                return None;
            }
            time = Some(h * 3600 + m * 60 + s);
        } else if let Some(m) = month_number(token) {
            month = Some(m);
        } else if let Ok(n) = token.parse::<i64>() {
            if day.is_none() && token.len() <= 2 {
                day = Some(n);
            } else if token.len() == 2 {
                // RFC 850's two-digit year.
                year = Some(if n < 70 { 2000 + n } else { 1900 + n });
            } else {
                year = Some(n);
            }
        }
    }
    let (day, month, year, time) = (day?, month?, year?, time?);
    if !(1..=31).contains(&day) || !(1970..=9999).contains(&year) {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + time)
}

fn month_number(token: &str) -> Option<i64> {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    MONTHS
        .iter()
        .position(|m| m.eq_ignore_ascii_case(token))
        .map(|i| i as i64 + 1)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(fields: &[(&str, &str)]) -> Headers {
        fields.iter().copied().collect()
    }

    #[test]
    fn http_dates_in_all_three_forms() {
        // 784111777 is 1994-11-06T08:49:37Z (RFC 9110's example).
        assert_eq!(
            http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(
            http_date("Sunday, 06-Nov-94 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(http_date("Sun Nov  6 08:49:37 1994"), Some(784_111_777));
        assert_eq!(http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(
            http_date("Tue, 29 Feb 2028 23:59:59 GMT"),
            Some(1_835_481_599)
        );
        assert_eq!(http_date("garbage"), None);
        assert_eq!(http_date("Sun, 06 Nov 1994 25:49:37 GMT"), None);
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(retry_after_s(&h(&[("retry-after", "20")])), Some(20.0));
        assert_eq!(
            retry_after_s(&h(&[("retry-after", "1.5"), ("retry-after-ms", "250")])),
            Some(0.25)
        );
        let dated = h(&[
            ("date", "Wed, 21 Oct 2015 07:28:00 GMT"),
            ("retry-after", "Wed, 21 Oct 2015 07:28:45 GMT"),
        ]);
        assert_eq!(retry_after_s(&dated), Some(45.0));
        assert_eq!(
            retry_after_s(&h(&[("retry-after", "Wed, 21 Oct 2015 07:28:45 GMT")])),
            None
        );
        assert_eq!(retry_after_s(&h(&[("retry-after", "-3")])), None);
    }

    #[test]
    fn classification() {
        assert_eq!(
            classify(429, Some("insufficient_quota"), None),
            "insufficient_quota"
        );
        assert_eq!(
            classify(429, Some("requests"), Some("rate_limit_exceeded")),
            "rate_limited"
        );
        assert_eq!(classify(529, Some("overloaded_error"), None), "overloaded");
        assert_eq!(classify(401, None, None), "auth");
        assert_eq!(classify(422, None, None), "invalid_request");
        assert_eq!(classify(503, None, None), "server_error");
        assert_eq!(classify(409, None, None), "client_error");
    }
}
