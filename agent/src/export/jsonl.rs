//! JSON Lines event log: one `CallRecord` per line, and one line per AI
//! endpoint connection that was not decrypted (`"record":"endpoint"`).
//!
//! `record` serialises and hands the line to a dedicated writer thread over a
//! bounded channel (`try_send`; a full queue is a counted drop, never a wait).
//! The thread buffers, flushes at least every `flush_interval`, and rotates
//! by size: `events.jsonl` -> `events.jsonl.1` -> ... -> `events.jsonl.{keep}`.

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::metrics::lock;
use super::{redacted, ExportError, Exporter, SelfCounter};
use crate::record::{endpoint::EndpointConnection, CallRecord};

#[derive(Clone, Debug)]
pub struct JsonlOptions {
    pub path: PathBuf,
    /// Rotate once the current file would grow past this many bytes.
    pub max_bytes: u64,
    /// Rotated files kept besides the current one.
    pub keep_files: usize,
    /// Lines waiting for the writer thread before new ones are dropped.
    pub queue: usize,
    pub flush_interval: Duration,
}

impl JsonlOptions {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        JsonlOptions {
            path: path.into(),
            max_bytes: 64 * 1024 * 1024,
            keep_files: 5,
            queue: 10_000,
            flush_interval: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, Default)]
pub struct JsonlStats {
    pub written: AtomicU64,
    pub dropped: AtomicU64,
    pub errors: AtomicU64,
    pub rotations: AtomicU64,
}

enum Message {
    Line(Vec<u8>),
    Flush(SyncSender<()>),
}

/// The JSON Lines exporter. Dropping it (or `shutdown`) flushes and joins the thread.
pub struct JsonlWriter {
    sender: Mutex<Option<SyncSender<Message>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    stats: Arc<JsonlStats>,
}

impl std::fmt::Debug for JsonlWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonlWriter")
            .field("stats", &self.stats)
            .finish()
    }
}

impl JsonlWriter {
    /// Serialises one line and queues it; a full queue counts a drop.
    fn queue(&self, value: &impl serde::Serialize) {
        let mut line = match serde_json::to_vec(value) {
            Ok(line) => line,
            Err(_) => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        line.push(b'\n');
        if !self.send(Message::Line(line)) {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Opens (creating parent directories) and starts the writer thread.
    pub fn start(options: JsonlOptions) -> Result<Self, ExportError> {
        if let Some(parent) = options.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent).map_err(|source| ExportError::Io {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        let file = open_append(&options.path)?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        let (sender, receiver) = mpsc::sync_channel(options.queue.max(1));
        let stats = Arc::new(JsonlStats::default());
        let mut sink = Sink {
            options,
            out: Some(BufWriter::new(file)),
            size,
            stats: Arc::clone(&stats),
        };
        let thread = std::thread::Builder::new()
            .name("tokenscope-jsonl".into())
            .spawn(move || sink.run(receiver))
            .map_err(ExportError::Thread)?;
        Ok(JsonlWriter {
            sender: Mutex::new(Some(sender)),
            thread: Mutex::new(Some(thread)),
            stats,
        })
    }

    pub fn stats(&self) -> &JsonlStats {
        &self.stats
    }

    fn send(&self, message: Message) -> bool {
        let sender = lock(&self.sender);
        let Some(sender) = sender.as_ref() else {
            return false;
        };
        match sender.try_send(message) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
        }
    }
}

impl Exporter for JsonlWriter {
    fn name(&self) -> &'static str {
        "jsonl"
    }

    fn export(&self, record: &CallRecord) {
        self.queue(&redacted(record));
    }

    fn export_endpoint(&self, connection: &EndpointConnection) {
        self.queue(connection);
    }

    /// Waits until every line queued before the call is written and flushed.
    fn flush(&self) -> Result<(), ExportError> {
        let (ack, done) = mpsc::sync_channel(1);
        let sent = {
            let sender = lock(&self.sender);
            match sender.as_ref() {
                // A blocking send: flush is allowed to wait for room in the queue.
                Some(sender) => sender.send(Message::Flush(ack)).is_ok(),
                None => false,
            }
        };
        if !sent {
            return Err(ExportError::Stopped);
        }
        done.recv_timeout(Duration::from_secs(10))
            .map_err(|_| ExportError::Stopped)
    }

    fn shutdown(&self) -> Result<(), ExportError> {
        lock(&self.sender).take();
        if let Some(thread) = lock(&self.thread).take() {
            thread.join().map_err(|_| ExportError::Stopped)?;
        }
        Ok(())
    }

    fn self_counters(&self) -> Vec<SelfCounter> {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            SelfCounter::new(
                "tokenscope_jsonl_records_written_total",
                &[],
                get(&self.stats.written),
            ),
            SelfCounter::new(
                "tokenscope_jsonl_records_dropped_total",
                &[("reason", "queue_full")],
                get(&self.stats.dropped),
            ),
            SelfCounter::new(
                "tokenscope_jsonl_errors_total",
                &[],
                get(&self.stats.errors),
            ),
            SelfCounter::new(
                "tokenscope_jsonl_rotations_total",
                &[],
                get(&self.stats.rotations),
            ),
        ]
    }
}

impl Drop for JsonlWriter {
    fn drop(&mut self) {
        let _ = Exporter::shutdown(self);
    }
}

struct Sink {
    options: JsonlOptions,
    out: Option<BufWriter<File>>,
    size: u64,
    stats: Arc<JsonlStats>,
}

impl Sink {
    fn run(&mut self, receiver: mpsc::Receiver<Message>) {
        let interval = self.options.flush_interval;
        let mut last_flush = Instant::now();
        loop {
            let wait = interval.saturating_sub(last_flush.elapsed());
            match receiver.recv_timeout(wait) {
                Ok(Message::Line(line)) => self.write(&line),
                Ok(Message::Flush(ack)) => {
                    self.flush();
                    last_flush = Instant::now();
                    let _ = ack.send(());
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    self.flush();
                    return;
                }
            }
            if last_flush.elapsed() >= interval {
                self.flush();
                last_flush = Instant::now();
            }
        }
    }

    fn write(&mut self, line: &[u8]) {
        let len = line.len() as u64;
        if self.size > 0 && self.size.saturating_add(len) > self.options.max_bytes {
            self.rotate();
        }
        if self.out.is_none() {
            // A previous error closed the file; try again for this line.
            match open_append(&self.options.path) {
                Ok(file) => {
                    self.size = file.metadata().map(|m| m.len()).unwrap_or(0);
                    self.out = Some(BufWriter::new(file));
                }
                Err(_) => {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }
        let Some(out) = self.out.as_mut() else {
            return;
        };
        match out.write_all(line) {
            Ok(()) => {
                self.size = self.size.saturating_add(len);
                self.stats.written.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => {
                tracing::warn!(event = "jsonl_write_failed", %error, "dropping the event log file handle");
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                self.out = None;
            }
        }
    }

    fn flush(&mut self) {
        if let Some(out) = self.out.as_mut() {
            if out.flush().is_err() {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                self.out = None;
            }
        }
    }

    fn rotate(&mut self) {
        self.flush();
        self.out = None;
        let path = &self.options.path;
        let keep = self.options.keep_files;
        let rotated = |n: usize| rotated_path(path, n);
        let result = if keep == 0 {
            fs::remove_file(path)
        } else {
            // Oldest first: .keep is overwritten by .keep-1, and so on down to the live file.
            let mut result = Ok(());
            for n in (1..keep).rev() {
                let from = rotated(n);
                if from.exists() {
                    if let Err(error) = fs::rename(&from, rotated(n + 1)) {
                        result = Err(error);
                    }
                }
            }
            result.and(fs::rename(path, rotated(1)))
        };
        if result.is_err() {
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
        } else {
            self.stats.rotations.fetch_add(1, Ordering::Relaxed);
        }
        self.size = 0;
    }
}

/// `events.jsonl` -> `events.jsonl.N`.
pub fn rotated_path(path: &Path, n: usize) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

fn open_append(path: &Path) -> Result<File, ExportError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| ExportError::Io {
            path: path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::test_records;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("tokenscope-jsonl-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn writes_one_parseable_record_per_line_without_secrets() {
        let dir = temp_dir("lines");
        let path = dir.join("nested/events.jsonl");
        let writer = JsonlWriter::start(JsonlOptions::new(&path)).expect("start writer");
        let records = test_records();
        for record in &records {
            writer.export(record);
        }
        writer.flush().expect("flush");
        let text = fs::read_to_string(&path).expect("read log");
        let parsed: Vec<CallRecord> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("line is a CallRecord"))
            .collect();
        assert_eq!(parsed.len(), records.len());
        for (got, sent) in parsed.iter().zip(&records) {
            assert_eq!(got.call.usage, sent.call.usage);
            assert_eq!(got.cost_usd, sent.cost_usd);
            assert_eq!(got.attribution, sent.attribution);
        }
        assert!(
            records.iter().any(|r| r.call.path.contains("key=")),
            "fixture needs a keyed URL"
        );
        crate::export::assert_no_secrets(&text);
        writer.shutdown().expect("shutdown");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn flushes_within_the_interval_without_an_explicit_flush() {
        let dir = temp_dir("interval");
        let path = dir.join("events.jsonl");
        let mut options = JsonlOptions::new(&path);
        options.flush_interval = Duration::from_millis(200);
        let writer = JsonlWriter::start(options).expect("start writer");
        writer.export(&test_records()[0]);
        let deadline = Instant::now() + Duration::from_secs(3);
        while fs::metadata(&path).map(|m| m.len()).unwrap_or(0) == 0 {
            assert!(
                Instant::now() < deadline,
                "line was not flushed by the timer"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn rotates_by_size_and_keeps_n_files() {
        let dir = temp_dir("rotate");
        let path = dir.join("events.jsonl");
        let mut options = JsonlOptions::new(&path);
        options.max_bytes = 2_000;
        options.keep_files = 2;
        let writer = JsonlWriter::start(options).expect("start writer");
        let records = test_records();
        for _ in 0..10 {
            for record in &records {
                writer.export(record);
            }
        }
        writer.flush().expect("flush");
        assert!(writer.stats().rotations.load(Ordering::Relaxed) >= 3);
        assert!(rotated_path(&path, 1).exists());
        assert!(rotated_path(&path, 2).exists());
        assert!(!rotated_path(&path, 3).exists());
        for file in [path.clone(), rotated_path(&path, 1), rotated_path(&path, 2)] {
            let text = fs::read_to_string(&file).expect("read");
            assert!(
                text.len() as u64 <= 2_000 || text.lines().count() == 1,
                "{file:?} too big"
            );
            for line in text.lines() {
                serde_json::from_str::<CallRecord>(line).expect("whole lines only");
            }
        }
        assert_eq!(writer.stats().errors.load(Ordering::Relaxed), 0);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn shutdown_writes_out_queued_lines_and_later_records_are_counted_drops() {
        let dir = temp_dir("shutdown");
        let path = dir.join("events.jsonl");
        let writer = JsonlWriter::start(JsonlOptions::new(&path)).expect("start writer");
        let records = test_records();
        for record in &records {
            writer.export(record);
        }
        writer.shutdown().expect("shutdown");
        let text = fs::read_to_string(&path).expect("read log");
        assert_eq!(text.lines().count(), records.len());
        writer.export(&records[0]);
        assert_eq!(writer.stats().dropped.load(Ordering::Relaxed), 1);
        assert!(matches!(writer.flush(), Err(ExportError::Stopped)));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn unwritable_path_is_an_error_not_a_panic() {
        let dir = temp_dir("bad");
        fs::create_dir_all(&dir).expect("mkdir");
        // A directory where the file should be.
        let path = dir.join("events.jsonl");
        fs::create_dir_all(&path).expect("mkdir");
        assert!(matches!(
            JsonlWriter::start(JsonlOptions::new(&path)),
            Err(ExportError::Io { .. })
        ));
        let _ = fs::remove_dir_all(&dir);
    }
}
