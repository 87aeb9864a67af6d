//! `fulcrum demo`: the embedded default. Three built-in backends and one
//! http service on 127.0.0.1:8080 balancing them, from a configuration that
//! goes through the same loader as any file.

use std::process::ExitCode;

/// The demo's configuration; `{b1}`..`{b3}` become the backends' addresses.
const DEMO_TOML: &str = r#"
[admin]
listen = "127.0.0.1:9900"

[[service]]
name = "demo"
listen = ["127.0.0.1:8080"]
mode = "http"
pool = "demo"

[[pool]]
name = "demo"
algorithm = "weighted_round_robin"

  [[pool.backend]]
  name = "alpha"
  address = "{b1}"
  weight = 2

  [[pool.backend]]
  name = "beta"
  address = "{b2}"

  [[pool.backend]]
  name = "gamma"
  address = "{b3}"
"#;

/// Runs the demo until Ctrl-C or SIGTERM.
pub fn main() -> ExitCode {
    crate::run::init_logging();
    let Some(runtime) = crate::run::runtime(false) else { return ExitCode::FAILURE };
    runtime.block_on(async {
        let mut text = DEMO_TOML.to_owned();
        for (i, name) in ["alpha", "beta", "gamma"].into_iter().enumerate() {
            let listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
            let (address, serve) = match crate::backend::spawn(listen, name).await {
                Ok(b) => b,
                Err(e) => {
                    eprintln!("error: cannot start demo backend {name}: {e}");
                    return ExitCode::FAILURE;
                }
            };
            tokio::spawn(serve);
            text = text.replace(&format!("{{b{}}}", i + 1), &address.to_string());
        }
        let model = match fulcrum_core::config::load(&text) {
            Ok(loaded) => loaded.model,
            Err(errors) => {
                for e in errors {
                    eprintln!("error: demo configuration: {e}");
                }
                return ExitCode::FAILURE;
            }
        };
        println!("Fulcrum demo: backends alpha (weight 2), beta and gamma behind http://127.0.0.1:8080");
        println!("Try:");
        println!("  curl -i http://127.0.0.1:8080/          # X-Backend says who answered");
        println!("  for i in 1 2 3 4; do curl -s http://127.0.0.1:8080/; done");
        println!("  curl -s http://127.0.0.1:8080/bytes/1048576 | wc -c");
        println!("  curl -i http://127.0.0.1:8080/status/503");
        println!(
            "  open http://127.0.0.1:9900/               # the dashboard: backends, sessions, drain buttons"
        );
        println!("  curl -s http://127.0.0.1:9900/api/v1/pools; curl -s http://127.0.0.1:9900/metrics");
        println!("  fulcrum ctl backends; fulcrum ctl drain demo/beta");
        println!("Ctrl-C stops everything.");
        crate::run::serve(model, std::path::Path::new("."), None, crate::shutdown::signal()).await
    })
}
