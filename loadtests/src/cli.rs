//! What the command line shares: durations as the benchmarks write them.

use std::time::Duration;

/// Parses `200ms`, `10s`, `1.5s`, `30m` or `1h`, for clap's `value_parser`.
pub fn humantime_duration(s: &str) -> Result<Duration, String> {
    parse_duration(s).ok_or_else(|| format!("invalid duration {s:?} (like 200ms, 10s, 30m or 1h)"))
}

fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if let Some(ms) = s.strip_suffix("ms") {
        return ms.parse().ok().map(Duration::from_millis);
    }
    let (number, unit) = match s.char_indices().last()? {
        (at, 's') => (&s[..at], 1.0),
        (at, 'm') => (&s[..at], 60.0),
        (at, 'h') => (&s[..at], 3600.0),
        _ => return None,
    };
    let seconds: f64 = number.parse().ok()?;
    Duration::try_from_secs_f64(seconds * unit).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_every_unit_and_nothing_else() {
        let d = |s| humantime_duration(s).ok();
        assert_eq!(d("200ms"), Some(Duration::from_millis(200)));
        assert_eq!(d("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(d("30m"), Some(Duration::from_secs(1800)));
        assert_eq!(d("1h"), Some(Duration::from_secs(3600)));
        for bad in ["", "10", "s", "-1s", "1x", "nans", "1e400s"] {
            assert_eq!(d(bad), None, "{bad:?}");
        }
    }
}
