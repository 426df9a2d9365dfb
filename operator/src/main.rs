//! `casserole-operator`: `run` (the controller), `crd` (print the CRD), `render` (print the
//! objects a CasseroleCache becomes).

use std::io::Read;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use casserole_operator::render::{render, RenderOptions};

#[derive(Parser, Debug)]
#[command(name = "casserole-operator", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the controller (leader-elected) and its /metrics and /healthz endpoints.
    Run(casserole_operator::run::RunArgs),
    /// Print the CasseroleCache CustomResourceDefinition as YAML.
    Crd,
    /// Print every object a CasseroleCache becomes, as multi-document YAML.
    Render {
        /// File holding one or more CasseroleCache documents ("-" for stdin).
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        /// Namespace of the caches (default: their own, else "default").
        #[arg(short, long)]
        namespace: Option<String>,
        /// Peer token to put in the generated Secret (default: a fresh random one).
        #[arg(long, env = "CASSEROLE_PEER_TOKEN", hide_env_values = true)]
        peer_token: Option<String>,
        /// Leave the peer token Secret out.
        #[arg(long)]
        without_secret: bool,
        /// IP family of the cluster's pod addresses (IPv6 peering URLs are bracketed).
        #[arg(long, value_enum, default_value = "IPv4")]
        ip_family: casserole_operator::resources::IpFamily,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => {
            print!("{}", casserole_operator::crd_yaml());
            Ok(())
        }
        Command::Render {
            file,
            namespace,
            peer_token,
            without_secret,
            ip_family,
        } => {
            let input = if file.as_os_str() == "-" {
                let mut s = String::new();
                std::io::stdin().read_to_string(&mut s)?;
                s
            } else {
                std::fs::read_to_string(&file)
                    .with_context(|| format!("reading {}", file.display()))?
            };
            let opts = RenderOptions {
                namespace,
                peer_token,
                without_secret,
                ip_family,
            };
            print!("{}", render(&input, &opts)?);
            Ok(())
        }
        Command::Run(args) => casserole_operator::run::main(args),
    }
}
