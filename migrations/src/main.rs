//! `migrate`: applies, rolls back or lists the schema migrations of the configured database.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use migration::Migrator;
use sea_orm_migration::{MigratorTrait, sea_orm::Database};

#[derive(Parser)]
#[command(about = "Apply or roll back the order service's database migrations")]
struct Args {
    /// Configuration file; `data.database_url` selects the database.
    #[arg(long = "conf", default_value = "configs/config.yaml")]
    conf: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Apply pending migrations (the default).
    Up,
    /// Roll back the last applied migration, or `--steps N` of them.
    Down {
        #[arg(long, default_value_t = 1)]
        steps: u32,
    },
    /// List applied and pending migrations.
    Status,
    /// Drop every table and apply all migrations again. Destroys all data.
    Fresh,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn".into()),
        )
        .init();
    let args = Args::parse_from(conf::normalize_args(std::env::args_os()));
    let config = conf::Config::load(&args.conf)?;
    let data = &config.data;
    data.ensure_sqlite_folder()
        .with_context(|| format!("failed to create the folder of {}", data.database_url))?;

    let db = Database::connect(data.database_url.expose())
        .await
        .with_context(|| format!("failed to connect to {}", data.database_url))?;
    tracing::info!(database = %data.database_url, "connected");
    match args.command.unwrap_or(Command::Up) {
        Command::Up => Migrator::up(&db, None).await?,
        Command::Down { steps } => Migrator::down(&db, Some(steps)).await?,
        Command::Status => Migrator::status(&db).await?,
        Command::Fresh => Migrator::fresh(&db).await?,
    }
    tracing::info!("done");
    Ok(())
}
