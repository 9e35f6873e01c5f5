//! `fleetctl report`: reports the API builds from the system's own records. Today the
//! compliance evidence report, as HTML or JSON from the API, or as PDF printed from that HTML by
//! headless Chromium.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Subcommand};
use time::format_description::well_known::Rfc3339;
use time::{Date, OffsetDateTime};

use super::Ctx;
use crate::error::{Exit, Failure};
use crate::output;
use crate::parse;

/// How long Chromium may take to print the report.
const PRINT_TIMEOUT: Duration = Duration::from_secs(120);

/// `fleetctl report ...`.
#[derive(Subcommand)]
pub enum ReportCommand {
    /// The compliance evidence report: each control (tenant isolation, audit integrity, access
    /// control with MFA, encryption in transit, device identity, enrollment limits, backups)
    /// with timestamped evidence from fleetd and where it came from; gaps marked as findings.
    Evidence(EvidenceArgs),
}

/// `fleetctl report evidence`.
#[derive(Args)]
pub struct EvidenceArgs {
    /// Start of the period: a date (2026-11-01, its 00:00 UTC), an RFC 3339 time, or a duration
    /// ago (30d).
    #[arg(long, value_name = "DATE", value_parser = period_start)]
    from: OffsetDateTime,
    /// End of the period: a date (2026-11-30, up to the end of that day UTC), an RFC 3339 time
    /// (exclusive), `now`, or a duration ago.
    #[arg(long, value_name = "DATE", value_parser = period_end)]
    to: OffsetDateTime,
    /// html (printable), pdf (html printed by headless `chromium` from PATH) or json.
    #[arg(long, value_enum, default_value = "html")]
    format: ReportFormat,
    /// The file to write (replaced only once the report is complete).
    #[arg(long, short, value_name = "FILE")]
    output: PathBuf,
}

/// `fleetctl report evidence --format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ReportFormat {
    /// One self-contained HTML page, printable.
    Html,
    /// PDF, printed from the HTML by headless Chromium.
    Pdf,
    /// The report's model as JSON.
    Json,
}

/// Runs a `fleetctl report` command.
pub async fn run(ctx: &Ctx, command: ReportCommand) -> Result<(), Failure> {
    match command {
        ReportCommand::Evidence(args) => evidence(ctx, args).await,
    }
}

/// `YYYY-MM-DD`, read as the RFC 3339 time of its midnight UTC.
fn parse_date(text: &str) -> Option<Date> {
    if text.len() != 10 {
        return None;
    }
    OffsetDateTime::parse(&format!("{text}T00:00:00Z"), &Rfc3339)
        .ok()
        .map(|at| at.date())
}

fn period_start(text: &str) -> Result<OffsetDateTime, String> {
    match parse_date(text) {
        Some(date) => Ok(date.midnight().assume_utc()),
        None => parse::moment(text),
    }
}

fn period_end(text: &str) -> Result<OffsetDateTime, String> {
    match parse_date(text) {
        Some(date) => date
            .next_day()
            .map(|d| d.midnight().assume_utc())
            .ok_or_else(|| format!("{text:?} is the last day there is")),
        None => parse::moment(text),
    }
}

async fn evidence(ctx: &Ctx, args: EvidenceArgs) -> Result<(), Failure> {
    if ctx.json() {
        return Err(Failure::usage(
            "report evidence writes --format html, pdf or json to -o; --json does not apply",
        ));
    }
    if args.to <= args.from {
        return Err(Failure::usage("--to must be later than --from"));
    }
    // Found before asking the API, so that a missing Chromium costs no audited export.
    let chromium = match args.format {
        ReportFormat::Pdf => Some(find_chromium()?),
        _ => None,
    };
    // With --tenant, ctx.api checks that the key is that tenant's (exit 3 otherwise).
    let api = ctx.api("report evidence").await?;
    let query = [
        ("from", parse::api_time(args.from)),
        ("to", parse::api_time(args.to)),
    ];
    let accept = match args.format {
        ReportFormat::Json => "application/json",
        ReportFormat::Html | ReportFormat::Pdf => "text/html",
    };
    let mut out = temp_beside(&args.output, "")?;
    match chromium {
        None => {
            api.download_as("v1/reports/evidence", &query, accept, out.as_file_mut())
                .await?;
        }
        Some(chromium) => {
            let mut html = tempfile::Builder::new()
                .prefix("fleetctl-evidence-")
                .suffix(".html")
                .tempfile()
                .map_err(|e| write_failure(Path::new("a temporary HTML file"), &e))?;
            api.download_as("v1/reports/evidence", &query, accept, html.as_file_mut())
                .await?;
            print_to_pdf(&chromium, html.path(), out.path()).await?;
        }
    }
    out.as_file_mut()
        .sync_all()
        .map_err(|e| write_failure(&args.output, &e))?;
    out.persist(&args.output)
        .map_err(|e| write_failure(&args.output, &e.error))?;
    output::notice(&format!("wrote {}", args.output.display()));
    Ok(())
}

/// `chromium` on PATH.
fn find_chromium() -> Result<PathBuf, Failure> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("chromium"))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| {
            Failure::new(
                Exit::Refused,
                "chromium-missing",
                "--format pdf prints the HTML report with headless Chromium, and no `chromium` \
                 is on PATH: install it (Debian: apt-get install chromium), or write \
                 --format html and print that",
            )
        })
}

async fn print_to_pdf(chromium: &Path, html: &Path, pdf: &Path) -> Result<(), Failure> {
    let url = format!("file://{}", html.display());
    let mut command = tokio::process::Command::new(chromium);
    command
        .arg("--headless")
        .arg("--no-sandbox")
        .arg("--disable-gpu")
        .arg("--no-pdf-header-footer")
        .arg(format!("--print-to-pdf={}", pdf.display()))
        .arg(url)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let outcome = tokio::time::timeout(PRINT_TIMEOUT, command.output())
        .await
        .map_err(|_| {
            Failure::new(
                Exit::Unavailable,
                "chromium-failed",
                format!("chromium did not print the report within {PRINT_TIMEOUT:?}"),
            )
        })?
        .map_err(|e| {
            Failure::new(
                Exit::Unavailable,
                "chromium-failed",
                format!("running {}: {e}", chromium.display()),
            )
        })?;
    let printed = std::fs::metadata(pdf).map(|m| m.len()).unwrap_or(0);
    if !outcome.status.success() || printed == 0 {
        let stderr = String::from_utf8_lossy(&outcome.stderr);
        let last = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        return Err(Failure::new(
            Exit::Unavailable,
            "chromium-failed",
            format!(
                "chromium did not print the report ({}): {last}",
                outcome.status
            ),
        ));
    }
    Ok(())
}

/// A temporary file in the directory of `path`, so that the finished report replaces `path` by
/// a rename and a failed one leaves nothing that looks complete.
fn temp_beside(path: &Path, suffix: &str) -> Result<tempfile::NamedTempFile, Failure> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    tempfile::Builder::new()
        .prefix(".fleetctl-report-")
        .suffix(suffix)
        .tempfile_in(&dir)
        .map_err(|e| write_failure(path, &e))
}

fn write_failure(path: &Path, e: &std::io::Error) -> Failure {
    Failure::new(
        Exit::Refused,
        "output",
        format!("writing {}: {e}", path.display()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_date_is_a_whole_utc_day() {
        let from = period_start("2026-11-01").unwrap();
        let to = period_end("2026-11-30").unwrap();
        assert_eq!(parse::api_time(from), "2026-11-01T00:00:00Z");
        assert_eq!(parse::api_time(to), "2026-12-01T00:00:00Z");
        assert_eq!(
            parse::api_time(period_end("2026-11-30T12:00:00Z").unwrap()),
            "2026-11-30T12:00:00Z"
        );
        assert!(period_start("2026-13-01").is_err());
        assert!(period_end("yesterday-ish").is_err());
    }
}
