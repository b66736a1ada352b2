//! The duration grammar: `500ms`, `3s`, `2m`, `1h`, and sums like `1m30s`.

use std::time::Duration;

/// The units, for error messages.
pub const UNITS: &str = "ms, s, m, h";

/// Parses a duration: one or more `<whole number><unit>` parts with units
/// `ms`, `s`, `m`, `h`, written without spaces (`1m30s`).
///
/// ```
/// use std::time::Duration;
/// use cluster_spec::duration::parse;
/// assert_eq!(parse("3s"), Ok(Duration::from_secs(3)));
/// assert_eq!(parse("1m30s"), Ok(Duration::from_secs(90)));
/// assert!(parse("3").is_err());
/// ```
pub fn parse(s: &str) -> Result<Duration, String> {
    if s.is_empty() {
        return Err(format!(
            "a duration must not be empty; write a number and a unit ({UNITS}), e.g. \"3s\""
        ));
    }
    let mut rest = s;
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!(
                "`{s}` is not a duration: expected a whole number at `{rest}`; write e.g. \"3s\", \"500ms\" or \"1m30s\""
            ));
        }
        let number: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("`{}` in `{s}` is too large", &rest[..digits]))?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = &rest[..unit_len];
        let part = match unit {
            "ms" => Some(Duration::from_millis(number)),
            "s" => Some(Duration::from_secs(number)),
            "m" => number.checked_mul(60).map(Duration::from_secs),
            "h" => number.checked_mul(3600).map(Duration::from_secs),
            "" => {
                return Err(format!(
                "duration `{s}` has no unit after `{number}`; units: {UNITS}, e.g. \"{number}s\""
            ))
            }
            other => return Err(format!("unknown unit `{other}` in `{s}`; allowed: {UNITS}")),
        };
        total = part
            .and_then(|p| total.checked_add(p))
            .ok_or_else(|| format!("`{s}` is too large"))?;
        rest = &rest[unit_len..];
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("3s"), Ok(Duration::from_secs(3)));
        assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("1s500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn refuses() {
        assert!(parse("").expect_err("empty").contains("empty"));
        assert!(parse("3").expect_err("unit").contains("no unit"));
        assert!(parse("3 s").is_err());
        assert!(parse("3sec").expect_err("unit").contains("unknown unit"));
        assert!(parse("s").expect_err("number").contains("whole number"));
        assert!(parse("-1s").is_err());
        assert!(parse("1.5s").is_err());
        assert!(parse("99999999999999999999s").is_err());
        assert!(parse("9999999999999999999h").is_err());
    }
}
