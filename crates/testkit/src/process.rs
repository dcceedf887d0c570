//! A service binary started as a child process, with its JSON log lines captured so a test can
//! wait for a line instead of sleeping.

use std::{
    path::Path,
    process::{ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
    sync::Notify,
};

/// How long a process may take to stop after SIGTERM before the test fails and kills it.
const STOP_DEADLINE: Duration = Duration::from_secs(30);

pub struct ServiceProcess {
    name: String,
    child: Option<Child>,
    lines: Arc<Mutex<Vec<Value>>>,
    new_line: Arc<Notify>,
}

impl ServiceProcess {
    /// Starts `binary -conf config` with `env` added to the environment and JSON logs on.
    pub fn start(binary: &Path, config: &Path, env: &[(&str, String)]) -> Self {
        let name = binary
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut command = Command::new(binary);
        command
            .arg("-conf")
            .arg(config)
            .env("APP__TELEMETRY__LOG_FORMAT", "json")
            .env("APP__TELEMETRY__LOG_FILTER", "info")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|error| panic!("failed to start {}: {error}", binary.display()));

        // Drain stdout continuously, so that the child does not block on a full pipe.
        let stdout = child.stdout.take().expect("stdout is piped");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let new_line = Arc::new(Notify::new());
        let (sink, notify, label) = (lines.clone(), new_line.clone(), name.clone());
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                match serde_json::from_str::<Value>(&line) {
                    Ok(value) => sink.lock().expect("log lock").push(value),
                    Err(_) => eprintln!("[{label}] {line}"),
                }
                notify.notify_waiters();
            }
            notify.notify_waiters();
        });
        Self {
            name,
            child: Some(child),
            lines,
            new_line,
        }
    }

    fn find(&self, message: &str) -> Option<Value> {
        let lines = self.lines.lock().expect("log lock");
        lines
            .iter()
            .find(|line| line["message"] == message)
            .cloned()
    }

    /// Waits until the process logs `message` and returns that line.
    ///
    /// # Panics
    ///
    /// Panics when `deadline` passes first or the process exits, printing what it logged.
    pub async fn wait_for_log(&mut self, message: &str, deadline: Duration) -> Value {
        let end = tokio::time::Instant::now() + deadline;
        loop {
            let notified = self.new_line.notified();
            if let Some(line) = self.find(message) {
                return line;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|child| child.try_wait().ok().flatten())
            {
                panic!(
                    "{} exited with {status} before logging {message:?}:\n{}",
                    self.name,
                    self.log_dump()
                );
            }
            // Wake up at least every 100 ms to notice an exit that logged nothing more.
            let wake = tokio::time::Instant::now() + Duration::from_millis(100);
            if tokio::time::timeout_at(wake.min(end), notified)
                .await
                .is_err()
                && tokio::time::Instant::now() >= end
            {
                panic!(
                    "{} did not log {message:?} in time:\n{}",
                    self.name,
                    self.log_dump()
                );
            }
        }
    }

    /// Returns every captured log line as text, for failure messages.
    pub fn log_dump(&self) -> String {
        let lines = self.lines.lock().expect("log lock");
        lines
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits for the `grpc server listening` line and returns its address.
    pub async fn grpc_addr(&mut self) -> String {
        let line = self
            .wait_for_log("grpc server listening", Duration::from_secs(60))
            .await;
        line["addr"]
            .as_str()
            .expect("the listening line has an addr")
            .to_string()
    }

    /// Returns the operating-system id of the process while it runs.
    pub fn id(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Sends SIGTERM and waits for the exit status.
    ///
    /// # Panics
    ///
    /// Panics when the process does not stop in time; it is killed first.
    pub async fn terminate(mut self) -> ExitStatus {
        let mut child = self.child.take().expect("process is running");
        let pid = child.id().expect("process has a pid").to_string();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "failed to send SIGTERM to {}", self.name);
        match tokio::time::timeout(STOP_DEADLINE, child.wait()).await {
            Ok(status) => status.expect("wait succeeds"),
            Err(_) => {
                let _ = child.kill().await;
                panic!(
                    "{} did not stop within {STOP_DEADLINE:?} of SIGTERM",
                    self.name
                );
            }
        }
    }

    /// Kills the process with SIGKILL, as a crash would, and waits for it.
    pub async fn kill(mut self) {
        let mut child = self.child.take().expect("process is running");
        let _ = child.kill().await;
    }
}
