//! Parsers of command-line values shared by `phile` and `phile-run`, with
//! errors that say what is expected.

/// A whole number of at least 1 (a count, or seconds).
pub fn at_least_one(text: &str) -> Result<u64, String> {
    match text.parse::<u64>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(number) => Ok(number),
        Err(_) => Err(format!("expected a whole number, at least 1, not {text:?}")),
    }
}

/// A peer's id: a whole number.
pub fn peer_id(text: &str) -> Result<u64, String> {
    text.parse::<u64>()
        .map_err(|_| format!("expected a peer id, a whole number such as 1 or 42, not {text:?}"))
}

/// The log filter `RUST_LOG` asks for, or `default` where it is unset;
/// where it is set but cannot be read, `default` too, with the reason to
/// tell the user (once logging is up): a typo must not silently turn the
/// logs the user asked for off.
pub fn log_filter(default: &str) -> (tracing_subscriber::EnvFilter, Option<String>) {
    use tracing_subscriber::EnvFilter;
    match std::env::var("RUST_LOG") {
        Ok(asked) if !asked.trim().is_empty() => match EnvFilter::try_new(&asked) {
            Ok(filter) => (filter, None),
            Err(error) => (
                EnvFilter::new(default),
                Some(format!(
                    "RUST_LOG={asked:?} is not a log filter ({error}); logging as if it were {default:?}"
                )),
            ),
        },
        _ => (EnvFilter::new(default), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_start_at_one_and_say_so() {
        assert_eq!(at_least_one("30"), Ok(30));
        assert_eq!(at_least_one("0"), Err("must be at least 1".to_owned()));
        assert!(at_least_one("-1").unwrap_err().contains("a whole number, at least 1"));
    }

    #[test]
    fn a_peer_id_is_a_whole_number() {
        assert_eq!(peer_id("42"), Ok(42));
        assert!(peer_id("alice")
            .unwrap_err()
            .contains("expected a peer id, a whole number"));
    }
}
