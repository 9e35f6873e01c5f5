//! Log output: the filter (with rumqttd one level quieter than the rest), colours only on a
//! terminal, plain lines or one JSON object per line.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// The embedded MQTT engine's log target. It logs several INFO lines per device session
/// (connection registered, subscription added, disconnecting), which the gateway already says
/// once, as "device connected" and "device disconnected".
const ENGINE_TARGET: &str = "rumqttd";

/// Installs the global subscriber on stderr. `RUST_LOG`, when set, replaces `log.level`.
pub fn init(config: &LogConfig) {
    let directives = std::env::var("RUST_LOG")
        .ok()
        .filter(|value| !value.trim().is_empty())
        .unwrap_or_else(|| config.level.clone());
    // A filter that does not parse was refused at load (log.level); a bad RUST_LOG falls back
    // to log.level.
    let filter = EnvFilter::try_new(with_engine_default(&directives))
        .unwrap_or_else(|_| EnvFilter::new(with_engine_default(&config.level)));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colours_wanted());
    match config.format {
        LogFormat::Plain => builder.init(),
        // Fields (tenant, device, source, reason...) at the top level of each object, beside
        // "message", "level", "target" and "timestamp".
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// ANSI colours only when stderr is a terminal and `NO_COLOR` is unset: a redirected log (a
/// file, journald, a collector) gets plain text.
fn colours_wanted() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// `directives` with a directive for rumqttd added, one level below the default level, unless
/// they already name rumqttd: at `info` its per-session INFO lines are hidden, at `debug` they
/// show, at `trace` everything does.
pub fn with_engine_default(directives: &str) -> String {
    if directives.contains(ENGINE_TARGET) {
        return directives.to_owned();
    }
    let default = directives
        .split(',')
        .map(str::trim)
        .rfind(|directive| !directive.is_empty() && !directive.contains('='))
        .unwrap_or("error")
        .to_ascii_lowercase();
    let engine = match default.as_str() {
        "trace" => "trace",
        "debug" => "info",
        "info" => "warn",
        "off" => "off",
        // warn, error, or something EnvFilter will judge.
        _ => "error",
    };
    if directives.trim().is_empty() {
        format!("{ENGINE_TARGET}={engine}")
    } else {
        format!("{directives},{ENGINE_TARGET}={engine}")
    }
}

#[cfg(test)]
mod tests {
    use super::with_engine_default;

    #[test]
    fn rumqttd_is_one_level_below_the_default() {
        assert_eq!(with_engine_default("info"), "info,rumqttd=warn");
        assert_eq!(with_engine_default("debug"), "debug,rumqttd=info");
        assert_eq!(with_engine_default("trace"), "trace,rumqttd=trace");
        assert_eq!(with_engine_default("warn"), "warn,rumqttd=error");
        assert_eq!(
            with_engine_default("info,store=debug"),
            "info,store=debug,rumqttd=warn"
        );
        assert_eq!(
            with_engine_default("store=debug"),
            "store=debug,rumqttd=error"
        );
    }

    #[test]
    fn an_explicit_rumqttd_directive_is_kept() {
        assert_eq!(
            with_engine_default("info,rumqttd=debug"),
            "info,rumqttd=debug"
        );
    }
}
