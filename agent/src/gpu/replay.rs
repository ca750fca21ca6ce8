//! A [`GpuSource`] that replays samples from a JSON Lines file (`--gpu-replay FILE`).
//!
//! Each line is a [`GpuSample`], or `{"failed": "reason"}` for a round in which
//! sampling failed. Blank lines are skipped.

use std::io::{BufRead, Read};
use std::path::Path;

use serde::Deserialize;

use super::{GpuError, GpuSample, GpuSource};

/// The longest replay line read.
pub const MAX_REPLAY_LINE: usize = 1 << 20;

#[derive(Deserialize)]
#[serde(untagged)]
enum ReplayLine {
    Failed(Failed),
    Sample(GpuSample),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Failed {
    failed: String,
}

pub struct ReplaySource {
    reader: Box<dyn BufRead + Send>,
    line: u64,
}

impl std::fmt::Debug for ReplaySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplaySource")
            .field("line", &self.line)
            .finish()
    }
}

impl ReplaySource {
    pub fn open(path: &Path) -> Result<ReplaySource, GpuError> {
        let file = std::fs::File::open(path).map_err(|source| GpuError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(ReplaySource::from_reader(Box::new(
            std::io::BufReader::new(file),
        )))
    }

    pub fn from_reader(reader: Box<dyn BufRead + Send>) -> ReplaySource {
        ReplaySource { reader, line: 0 }
    }

    fn next_line(&mut self, buf: &mut Vec<u8>) -> Result<bool, GpuError> {
        let io = |source| GpuError::Io {
            path: "<replay>".into(),
            source,
        };
        buf.clear();
        let n = (&mut self.reader)
            .take(MAX_REPLAY_LINE as u64 + 1)
            .read_until(b'\n', buf)
            .map_err(io)?;
        if n == 0 {
            return Ok(false);
        }
        self.line += 1;
        if buf.len() > MAX_REPLAY_LINE && buf.last() != Some(&b'\n') {
            // Skip the rest of the line, then report it.
            let mut rest = Vec::new();
            loop {
                rest.clear();
                let n = (&mut self.reader)
                    .take(64 * 1024)
                    .read_until(b'\n', &mut rest)
                    .map_err(io)?;
                if n == 0 || rest.last() == Some(&b'\n') {
                    break;
                }
            }
            return Err(GpuError::ReplayLineTooLong {
                line: self.line,
                max: MAX_REPLAY_LINE,
            });
        }
        Ok(true)
    }
}

impl GpuSource for ReplaySource {
    fn sample(&mut self) -> Result<GpuSample, GpuError> {
        let mut buf = Vec::new();
        loop {
            if !self.next_line(&mut buf)? {
                return Err(GpuError::Exhausted);
            }
            let text = buf.trim_ascii();
            if text.is_empty() {
                continue;
            }
            let line = self.line;
            return match serde_json::from_slice::<ReplayLine>(text) {
                Ok(ReplayLine::Sample(sample)) => Ok(sample),
                Ok(ReplayLine::Failed(f)) => Err(GpuError::RecordedFailure {
                    line,
                    reason: f.failed,
                }),
                Err(_) => {
                    // Untagged errors say little; parse as a sample again for a useful message.
                    let source = match serde_json::from_slice::<GpuSample>(text) {
                        Err(e) => e,
                        Ok(sample) => return Ok(sample),
                    };
                    Err(GpuError::BadReplayLine { line, source })
                }
            };
        }
    }
}
