//! Wall-clock time where records and tokens need it (history, webhooks, JWT `exp`): the
//! media path runs on `Instant`s.

/// Seconds since the Unix epoch, with fractions (0 on a clock before 1970).
pub fn unix_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
