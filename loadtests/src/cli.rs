//! What the command line shares: durations as the benchmarks write them.

use std::time::Duration;

/// Parses `10s`, `1.5s` or `200ms`, for clap's `value_parser`.
pub fn humantime_duration(s: &str) -> Result<Duration, String> {
    parse_duration(s).ok_or_else(|| format!("invalid duration {s:?} (like 10s or 200ms)"))
}

fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if let Some(ms) = s.strip_suffix("ms") {
        return ms.parse().ok().map(Duration::from_millis);
    }
    s.strip_suffix('s')?
        .parse()
        .ok()
        .map(Duration::from_secs_f64)
}
