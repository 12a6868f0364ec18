//! Small text helpers shared by the builders: clipping long names, and
//! numbers written the way a reader takes them in at a glance.

/// `text` cut to at most `max` characters, an ellipsis marking the cut.
pub(crate) fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut clipped: String = text.chars().take(max.saturating_sub(1)).collect();
    clipped.push('…');
    clipped
}

/// `21530` as `21,530`.
pub(crate) fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// A size for people: `5 B`, `15.6 KiB`, `2.0 MiB`.
pub(crate) fn bytes(n: u64) -> String {
    match n {
        0..1024 => format!("{n} B"),
        n => scaled(n, 1024.0, &["KiB", "MiB", "GiB", "TiB"]),
    }
}

/// A rate for people, in the decimal units rates are given in (as
/// `set_rate` and `phile`'s caps take them): `500 B/s`, `1.0 MB/s`.
pub(crate) fn rate(bytes_per_second: u64) -> String {
    match bytes_per_second {
        0..1000 => format!("{bytes_per_second} B/s"),
        n => scaled(n, 1000.0, &["kB/s", "MB/s", "GB/s", "TB/s"]),
    }
}

/// `n` (at least `base`) in the largest of `units` it reaches, each `base`
/// times the one before, with one decimal.
fn scaled(n: u64, base: f64, units: &[&str]) -> String {
    let mut value = n as f64 / base;
    let mut unit = 0;
    while value >= base && unit + 1 < units.len() {
        value /= base;
        unit += 1;
    }
    format!("{value:.1} {}", units[unit])
}

/// `1 download`, `3 downloads`.
pub(crate) fn plural(n: u64, word: &str) -> String {
    format!("{} {word}{}", thousands(n), if n == 1 { "" } else { "s" })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_at_a_glance() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(21530), "21,530");
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(bytes(5), "5 B");
        assert_eq!(bytes(2 * 1024 * 1024), "2.0 MiB");
        assert_eq!(bytes(16000), "15.6 KiB");
        assert_eq!(rate(500), "500 B/s");
        assert_eq!(rate(1_000_000), "1.0 MB/s");
        assert_eq!(rate(2_500_000_000), "2.5 GB/s");
        assert_eq!(plural(1, "download"), "1 download");
        assert_eq!(plural(2000, "client"), "2,000 clients");
    }

    #[test]
    fn clipping_counts_characters_not_bytes() {
        assert_eq!(clip("short", 10), "short");
        assert_eq!(clip("ééééé", 3), "éé…");
    }
}
