//! The `fulcrum` command: parse arguments, hand over to a subcommand.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[global_allocator]
static ALLOCATOR: fulcrum::alloc::MiMalloc = fulcrum::alloc::MiMalloc;

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
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
        workers: Option<u16>,
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
    /// The load agent for a backend host: reports what the host can take as JSON (GET /report).
    Agent {
        /// The address to serve the report on.
        #[arg(long)]
        listen: SocketAddr,
        /// The network interface to report (default: the first non-loopback one with a link speed, else lo).
        #[arg(long)]
        interface: Option<String>,
        /// Sessions this host can take, passed to the balancer's load score.
        #[arg(long)]
        capacity: Option<u64>,
        /// A file whose first word (up, drain, down) is the operator state, read on every report.
        #[arg(long)]
        state_file: Option<PathBuf>,
    },
    /// The admin API from the shell: status, backends, sessions, snat, drain/enable/disable, reload.
    Ctl(fulcrum::ctl::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Run { config, workers } => fulcrum::run::main(&config, workers.map(usize::from)),
        Command::Demo => fulcrum::demo::main(),
        Command::Backend { listen, name } => fulcrum::backend::main(listen, &name),
        Command::Agent { listen, interface, capacity, state_file } => {
            fulcrum::agent::main(fulcrum::agent::Options { listen, interface, capacity, state_file })
        }
        Command::Ctl(args) => fulcrum::ctl::main(args),
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
