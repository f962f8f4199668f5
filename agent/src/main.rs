use clap::Parser;
use tokentap_agent::config::{Cli, Command, Settings};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Report { events, out, baseline }) = &cli.command {
        // No capture, no root: render from a file.
        let out = out.clone().unwrap_or_else(|| events.parent().unwrap_or(std::path::Path::new(".")).to_path_buf());
        // The stats file an audit leaves beside its events carries the blind spots.
        let stats = events.with_file_name("stats.json");
        let stats = stats.exists().then_some(stats.as_path());
        let written = match baseline {
            Some(b) => tokentap_agent::audit::write_comparison(events, b, &out, cli.prices.as_deref()),
            None => tokentap_agent::audit::write_report(events, &out, cli.prices.as_deref(), stats),
        };
        return match written {
            Ok(_) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tokentap-agent report: {e:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    if let Some(Command::Inspect { files }) = &cli.command {
        return inspect(files);
    }
    let settings = match Settings::resolve(&cli) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tokentap-agent: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    if let Some(Command::Uninstall { force }) = &cli.command {
        return uninstall(settings.handover_dir.as_deref(), *force);
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&settings.log_level));
    // Logs go to stderr so that `--output stdout` stays pure JSONL.
    // No colour codes where stderr is a file or a pod's log.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).init();
    let result = match &cli.command {
        Some(Command::Audit { out }) => tokentap_agent::audit::audit(settings, out),
        _ => tokentap_agent::run::run(settings),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let text = tokentap_agent::error_text(e.as_ref());
            tracing::error!("{text}");
            eprintln!("tokentap-agent: {text}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `tokentap-agent uninstall`: remove the handover pins, say what was there.
fn uninstall(dir: Option<&std::path::Path>, force: bool) -> std::process::ExitCode {
    let dir = dir.unwrap_or(std::path::Path::new("/sys/fs/bpf/tokentap"));
    match tokentap_agent::uninstall::uninstall(dir, force) {
        Ok(done) if done.missing => {
            println!("nothing to remove: {} does not exist", dir.display());
            std::process::ExitCode::SUCCESS
        }
        Ok(done) => {
            println!("removed {} pinned maps from {}", done.removed, dir.display());
            for name in &done.left {
                println!("left {name}: not a map tokentap pinned");
            }
            for pid in done.running {
                // --force: its own maps stay with it until it exits; nothing is pinned for it any more.
                println!("agent {pid} still runs: its probes go when it stops; the next agent will not see it");
            }
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tokentap-agent uninstall: {}", tokentap_agent::error_text(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// `tokentap-agent inspect FILE...`: one JSON line per file.
fn inspect(files: &[std::path::PathBuf]) -> std::process::ExitCode {
    let mut ok = true;
    for f in files {
        let line = match tokentap_agent::discovery::inspect(f) {
            Ok(s) => {
                let points: Vec<_> = tokentap_agent::probes::attach_points(&s)
                    .into_iter()
                    .map(|(program, offset)| serde_json::json!({"program": program, "offset": format!("{offset:#x}")}))
                    .collect();
                let library = (s.captures_tls() || s.refused.is_some()).then(|| s.library.as_str());
                serde_json::json!({"file": f, "tls_library": library, "probes": points, "not_probed": s.refused})
            }
            Err(e) => {
                ok = false;
                serde_json::json!({"file": f, "error": e.to_string()})
            }
        };
        println!("{line}");
    }
    if ok {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}
