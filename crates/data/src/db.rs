//! Opening the database pool and applying migrations.

use std::time::Duration;

use migration::{Migrator, MigratorTrait};
use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr};
use tracing::info;

/// Opens a pool on `config.database_url`. For SQLite it creates the file's folder and turns
/// on write-ahead logging, so that a server and relays in other processes can share the file.
///
/// # Errors
///
/// Returns the driver's error when the database cannot be reached or the folder cannot be
/// created.
pub async fn connect(config: &conf::DataConfig) -> Result<DatabaseConnection, DbErr> {
    config
        .ensure_sqlite_folder()
        .map_err(|error| DbErr::Custom(format!("failed to create the database folder: {error}")))?;
    let mut options = ConnectOptions::new(config.database_url.expose());
    options
        .max_connections(config.max_connections)
        .connect_timeout(Duration::from_secs(5))
        .acquire_timeout(Duration::from_secs(5))
        .sqlx_logging(false);
    let db = Database::connect(options).await?;
    if db.get_database_backend() == DbBackend::Sqlite {
        // The journal mode is stored in the file, so one statement covers every connection.
        db.execute_unprepared("PRAGMA journal_mode=WAL").await?;
    }
    info!(database = %config.database_url, "database connected");
    Ok(db)
}

/// Applies pending migrations.
///
/// # Errors
///
/// Returns the failing migration's error; migrations before it stay applied.
pub async fn migrate(db: &DatabaseConnection) -> Result<(), DbErr> {
    Migrator::up(db, None).await?;
    info!("database migrations applied");
    Ok(())
}
