//! `casserole-operator run`.

#[derive(clap::Args, Debug)]
pub struct RunArgs {}

pub fn main(_args: RunArgs) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}
