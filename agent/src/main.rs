//! The `tokenscope` command.

use clap::{Parser, Subcommand};
use tokenscope::{
    capture::{self, CaptureArgs},
    config::{Config, Overrides},
    doctor::{self, DoctorArgs},
    report::{self, ReportArgs},
};

#[derive(Parser)]
#[command(
    name = "tokenscope",
    version,
    about = "What your organisation gets for its AI spend, per pod, team and model"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent: capture, decode, attribute, price and export LLM calls.
    Run(Overrides),
    /// Report what each team pays, from the agent's JSON Lines events.
    Report(ReportArgs),
    /// Check whether capture can work on this node, by trying each step.
    Doctor(DoctorArgs),
    /// Print each reassembled connection's request and response heads (with
    /// process, addresses and TLS library; credentials redacted), optionally
    /// dumping the bytes.
    Capture(CaptureArgs),
}

/// Logs to stderr at the configured level, as text or as one JSON object a
/// line (the default in a container, for the node's log collector).
fn init_tracing(agent: &tokenscope::config::AgentConfig) {
    let level = &agent.log_level;
    let filter = tracing_subscriber::EnvFilter::try_new(format!("tokenscope={level},warn"))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match agent.log_format {
        tokenscope::config::LogFormat::Text => builder.init(),
        tokenscope::config::LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(overrides) => {
            let config = Config::load(&overrides)?;
            init_tracing(&config.agent);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            runtime.block_on(tokenscope::daemon::run(config))
        }
        Command::Report(args) => {
            let pricer = args.pricer()?;
            print!("{}", report::run(&args, &pricer)?);
            Ok(())
        }
        Command::Doctor(args) => {
            let report = doctor::run(&args)?;
            if args.json {
                println!("{}", report.render_json());
            } else {
                print!("{}", report.render_text());
            }
            if !report.capture_possible() {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Capture(args) => {
            tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
                .with_writer(std::io::stderr)
                .init();
            capture::run(&args)
        }
    }
}
