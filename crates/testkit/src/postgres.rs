//! A private PostgreSQL cluster for tests that take the database down, driven through
//! `scripts/postgres.sh` in a scratch folder.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
};

use tokio::process::Command;

use crate::{free_port, required_env};

/// A PostgreSQL cluster on 127.0.0.1 with fsync off, as `scripts/postgres.sh start` runs it.
/// Dropping the node stops the cluster, also when a test panics.
pub struct PostgresNode {
    folder: tempfile::TempDir,
    running: bool,
    pub port: u16,
}

/// Returns the path of `scripts/postgres.sh`, which lies beside `RABBITMQ_SCRIPT`.
fn postgres_script() -> PathBuf {
    Path::new(&required_env("RABBITMQ_SCRIPT")).with_file_name("postgres.sh")
}

impl PostgresNode {
    /// Initialises a cluster in a scratch folder and starts it. Returns once the cluster
    /// accepts connections, because `pg_ctl start --wait` waits for that.
    pub async fn start() -> Self {
        let folder = tempfile::Builder::new()
            .prefix("postgres-")
            .tempdir()
            .expect("scratch folder is created");
        let mut node = Self {
            folder,
            running: false,
            port: free_port(),
        };
        node.start_again().await;
        node
    }

    /// Returns the URL of the `postgres` database for user `postgres` (trust authentication).
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn folder_arg(&self) -> String {
        self.folder.path().display().to_string()
    }

    async fn script(&self, args: &[&str]) {
        let status = Command::new(postgres_script())
            .args(args)
            .stdout(Stdio::null())
            .status()
            .await
            .expect("scripts/postgres.sh runs");
        assert!(
            status.success(),
            "scripts/postgres.sh {args:?} failed: {status}; see {}/postgres.log",
            self.folder_arg()
        );
    }

    /// Stops the cluster with `pg_ctl stop --mode=fast`, keeping its data: open connections
    /// are terminated and new ones are refused.
    pub async fn stop(&mut self) {
        let folder = self.folder_arg();
        self.script(&["stop", &folder]).await;
        self.running = false;
    }

    /// Starts the cluster again on the same port and data after [`Self::stop`].
    pub async fn start_again(&mut self) {
        let folder = self.folder_arg();
        let port = self.port.to_string();
        self.script(&["start", &folder, &port]).await;
        self.running = true;
    }
}

impl Drop for PostgresNode {
    fn drop(&mut self) {
        if self.running {
            let _ = std::process::Command::new(postgres_script())
                .arg("stop")
                .arg(self.folder.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}
