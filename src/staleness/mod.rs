//! Staleness, measured: the probe `/test` and `rwsplit probe` run, the chart `/test` draws
//! of it, and the primary's own view of its replicas.

pub mod chart;
pub mod probe;
pub mod senders;

use rwsplit_router::Consistency;

/// A mode name, `all` for every mode, or blank for `default`; the error says what is allowed.
pub fn parse_modes(raw: &str, default: Consistency) -> Result<Vec<Consistency>, String> {
    match raw.trim() {
        "" => Ok(vec![default]),
        "all" => Ok(Consistency::ALL.to_vec()),
        other => other
            .parse()
            .map(|m| vec![m])
            .map_err(|_| "mode must be one of eventual, sticky, causal or all".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_including_all_and_blank() {
        let default = Consistency::Sticky;
        assert_eq!(parse_modes("all", default), Ok(Consistency::ALL.to_vec()));
        assert_eq!(parse_modes(" ", default), Ok(vec![default]));
        assert_eq!(
            parse_modes("causal", default),
            Ok(vec![Consistency::Causal])
        );
        assert!(parse_modes("bogus", default).is_err_and(|e| e.contains("eventual, sticky")));
    }
}
