//! The command line every binary shares: `-conf PATH`.

use std::path::PathBuf;

use clap::Parser;

#[derive(Debug, Parser)]
pub struct Args {
    /// Configuration file; `APP__SECTION__KEY` environment variables override its values.
    #[arg(long = "conf", default_value = "configs/config.yaml")]
    pub conf: PathBuf,
}

impl Args {
    /// Parses the process arguments, accepting the Go-style `-conf` as well as `--conf`.
    pub fn parse_env() -> Self {
        Self::parse_from(conf::normalize_args(std::env::args_os()))
    }

    /// Parses the arguments and loads the configuration they name.
    ///
    /// # Errors
    ///
    /// Returns the configuration error, which names the file and the offending key.
    pub fn load() -> anyhow::Result<conf::Config> {
        let args = Self::parse_env();
        Ok(conf::Config::load(&args.conf)?)
    }
}
