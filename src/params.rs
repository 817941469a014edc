//! Bounded whole numbers from query strings and command lines, worded the same everywhere.

use std::fmt::Display;
use std::ops::RangeInclusive;
use std::str::FromStr;

/// `raw` as a whole number within `range`; `Ok(None)` when absent. The error names the
/// parameter and the range, so the caller can show it as is.
pub fn whole_number<T>(
    raw: Option<&str>,
    name: &str,
    range: RangeInclusive<T>,
) -> Result<Option<T>, String>
where
    T: FromStr + PartialOrd + Display,
{
    raw.map(|v| {
        v.trim()
            .parse::<T>()
            .ok()
            .filter(|n| range.contains(n))
            .ok_or_else(|| {
                format!(
                    "{name} must be a whole number from {} to {}",
                    range.start(),
                    range.end()
                )
            })
    })
    .transpose()
}

#[cfg(test)]
mod tests {
    use super::whole_number;

    #[test]
    fn bounded_with_a_message_naming_the_range() {
        assert_eq!(whole_number(None, "n", 1..=200u32), Ok(None));
        assert_eq!(whole_number(Some(" 7 "), "n", 1..=200u32), Ok(Some(7)));
        for bad in ["0", "201", "-1", "abc", "", "1.5"] {
            assert_eq!(
                whole_number(Some(bad), "n", 1..=200u32),
                Err("n must be a whole number from 1 to 200".to_owned()),
                "{bad}"
            );
        }
    }
}
