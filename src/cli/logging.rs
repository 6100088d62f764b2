//! Logs for an operator to read or ship: text (the default) or one JSON object per line, on
//! stderr; the level from `--log-level`, else `RUST_LOG`, else the command's default. A
//! filter that does not parse is an error, never a silent fallback.

use super::exit::CliError;
use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(clap::ValueEnum, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines (colour on a terminal).
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `fields.message`, the other fields,
    /// and the spans.
    Json,
}

/// The filter from `--log-level`, else a non-empty `rust_log` (the `RUST_LOG` variable),
/// else `default`.
///
/// # Errors
/// [`CliError::Usage`] naming the source of a filter that does not parse.
pub fn filter(
    level: Option<&str>,
    rust_log: Option<&str>,
    default: &str,
) -> Result<EnvFilter, CliError> {
    let parse = |text: &str, source: &str| {
        EnvFilter::builder()
            .parse(text)
            .map_err(|e| CliError::Usage(format!("{source}={text:?} is not a log filter: {e}; expected a level (error, warn, info, debug, trace, off) or directives like \"info,nodecloud=debug\"")))
    };
    match (level, rust_log.filter(|s| !s.trim().is_empty())) {
        (Some(l), _) => parse(l, "--log-level"),
        (None, Some(env)) => parse(env, "RUST_LOG"),
        (None, None) => parse(default, "the default"),
    }
}

/// Install the global subscriber and the panic hook.
///
/// # Errors
/// [`CliError::Usage`] for a filter that does not parse.
pub fn init(format: LogFormat, level: Option<&str>, default: &str) -> Result<(), CliError> {
    let rust_log = std::env::var("RUST_LOG").ok();
    let filter = filter(level, rust_log.as_deref(), default)?;
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second subscriber (in tests that call this twice) is refused; the first stays.
    let _ = match format {
        LogFormat::Text => builder
            .with_target(false)
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder.json().with_current_span(false).try_init(),
    };
    crate::node::install_panic_hook();
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn an_invalid_rust_log_is_an_error_that_names_it() {
        let e = filter(None, Some("info,nodecloud=loud"), "info").unwrap_err();
        assert!(e.to_string().contains("RUST_LOG"), "{e}");
        assert_eq!(e.exit_status(), 2);
    }

    #[test]
    fn the_log_level_option_wins_over_rust_log() {
        let f = filter(Some("debug"), Some("info,nodecloud=loud"), "info").unwrap();
        assert_eq!(f.to_string(), "debug");
        assert!(filter(Some("nonsense=level"), None, "info").is_err());
    }

    #[test]
    fn an_empty_rust_log_means_the_default() {
        assert_eq!(filter(None, Some(" "), "warn").unwrap().to_string(), "warn");
    }
}
