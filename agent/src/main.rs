use clap::Parser;
use tokentap_agent::config::{Cli, Settings};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::resolve(&cli) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tokentap-agent: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&settings.log_level));
    // Logs go to stderr so that `--output stdout` stays pure JSONL.
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    match tokentap_agent::run::run(settings) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("tokentap-agent: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
