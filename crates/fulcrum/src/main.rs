//! The `fulcrum` command: parse arguments, hand over to a subcommand.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "fulcrum", version, about = "A server load balancer")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the load balancer.
    Run {
        /// The configuration file (TOML).
        #[arg(short, long)]
        config: PathBuf,
        /// Worker threads (default: one per core).
        #[arg(long)]
        workers: Option<usize>,
    },
    /// Validate a configuration file; print every error, exit 1 if any.
    Check {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// The embedded default: three built-in backends behind an HTTP service on 127.0.0.1:8080.
    Demo,
    /// A built-in HTTP test backend (X-Backend header, /healthz, /status/N, /delay/MS, /bytes/N).
    Backend {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        name: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Run { config, workers } => fulcrum::run::main(&config, workers),
        Command::Demo => fulcrum::demo::main(),
        Command::Backend { listen, name } => fulcrum::backend::main(listen, &name),
    }
}

/// `fulcrum check`: every error on stderr (each naming its key path), a
/// one-line summary on stdout when the file is valid.
fn check(path: &Path) -> ExitCode {
    match fulcrum::run::load(path) {
        Ok(model) => {
            println!("{}: ok, {}", path.display(), model.summary());
            ExitCode::SUCCESS
        }
        Err(n) => {
            eprintln!("{}: {n} error(s)", path.display());
            ExitCode::FAILURE
        }
    }
}
