//! What programs deployd starts print: every byte goes through a pipe that is read and scrubbed of the call's secret
//! values before anything is written; the log file of a run is capped; what callers are shown is a bounded tail kept
//! in memory as the stream goes by, scrubbed before it is cut.
//!
//! Two readers exist. A hook's output is read by a thread of this process ([`pump`]), which keeps reading after the
//! hook exits for as long as a child it left behind holds the pipe. A service the `process` executor starts must
//! outlive the deployd that started it, so its output is read by a small relay process of its own ([`relay`], which
//! runs [`run_log_relay`]) when one is configured: with only an in-process reader, the service's output would have
//! nowhere to go once this process ends.

use std::io::{Read as _, Seek as _, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deploy_core::{Scrubber, SecretValue};

/// The most one run's log file grows to; output past it is counted and dropped (a line at the end says how much).
pub const LOG_LIMIT: u64 = 8 * 1024 * 1024;

/// The most of a run's output kept in memory for callers (events, errors).
const TAIL_KEPT: usize = 16 * 1024;

/// A pause in a program's output this long lets the complete lines held back out to the log.
const PAUSE: Duration = Duration::from_millis(200);

/// The variable that hands a relay the values to scrub (hex, comma-separated): never on a command line.
pub const RELAY_SECRETS_VARIABLE: &str = "DEPLOY_LOG_RELAY_SECRETS";

/// What a reader has let out so far.
#[derive(Debug, Default)]
struct Captured {
    /// The end of the scrubbed output, at most [`TAIL_KEPT`] bytes.
    tail: String,
    /// A scrubbed look at what the reader still holds back (for a look before the stream ends).
    held: String,
    /// Whether the stream ended (every writer closed the pipe).
    ended: bool,
}

/// A running reader of one program's output.
#[derive(Debug, Clone)]
pub(crate) struct Output {
    captured: Arc<Mutex<Captured>>,
}

impl Output {
    /// The last `max` bytes of the scrubbed output so far.
    pub(crate) fn tail(&self, max: usize) -> String {
        let c = self.captured.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut text = c.tail.clone();
        if !c.ended {
            text.push_str(&c.held);
        }
        crate::local::tail_of(&text, max)
    }

    /// Waits up to `grace` for the stream to end (a program that exited has usually closed it; a child it left
    /// running may hold it open for longer, and is not waited for).
    pub(crate) async fn settle(&self, grace: Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        while tokio::time::Instant::now() < deadline {
            if self.captured.lock().unwrap_or_else(std::sync::PoisonError::into_inner).ended {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// A pipe for a program's stdout and stderr, read by a thread of this process that scrubs every byte with `scrubber`
/// before appending it to `log` (created 0600, capped at [`LOG_LIMIT`]).
pub(crate) fn pump(log: &Path, scrubber: &Scrubber) -> std::io::Result<(Stdio, Stdio, Output)> {
    let (writer, output) = pump_writer(log, scrubber)?;
    let err = writer.try_clone()?;
    Ok((Stdio::from(writer), Stdio::from(err), output))
}

/// The write end of a pipe read as [`pump`] reads it.
fn pump_writer(log: &Path, scrubber: &Scrubber) -> std::io::Result<(std::io::PipeWriter, Output)> {
    let file = open_log(log)?;
    let (reader, writer) = std::io::pipe()?;
    let output = Output { captured: Arc::default() };
    let captured = Arc::clone(&output.captured);
    let scrubber = scrubber.clone();
    std::thread::Builder::new()
        .name("deploy-output".into())
        .spawn(move || copy_scrubbed(reader, file, &scrubber, Some(&captured)))?;
    Ok((writer, output))
}

/// A pipe for a program's stdout and stderr, read by a relay process started from `relay` (its argv; the log's path
/// is appended) that scrubs every byte before appending it to `log`. The relay outlives this process and ends when
/// every writer has closed the pipe.
pub(crate) fn relay(relay: &[String], log: &Path, scrubber: &Scrubber) -> std::io::Result<(Stdio, Stdio)> {
    use std::os::unix::process::CommandExt as _;
    let (program, args) = relay.split_first().ok_or_else(|| std::io::Error::other("the log relay's argv is empty"))?;
    let mut child = std::process::Command::new(program)
        .args(args)
        .arg(log)
        .env_clear()
        .env(RELAY_SECRETS_VARIABLE, encode(scrubber))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()?;
    let stdin = child.stdin.take().ok_or_else(|| std::io::Error::other("the relay has no stdin"))?;
    let out = std::os::fd::OwnedFd::from(stdin);
    let err = out.try_clone()?;
    // Reaped whenever it exits, so it never lingers as a zombie of this process.
    std::thread::spawn(move || child.wait());
    Ok((Stdio::from(out), Stdio::from(err)))
}

/// The relay's main: reads stdin until every writer closed it, scrubbing it with the values of
/// [`RELAY_SECRETS_VARIABLE`] before appending it to `log`. A binary that serves as the `process` executor's relay
/// (deployd's `log-relay` command) calls this and nothing else.
///
/// # Errors
/// The log cannot be opened, or the variable is malformed.
pub fn run_log_relay(log: &Path) -> std::io::Result<()> {
    let encoded = std::env::var(RELAY_SECRETS_VARIABLE).unwrap_or_default();
    let scrubber = decode(&encoded).ok_or_else(|| std::io::Error::other("malformed relay secrets"))?;
    let file = open_log(log)?;
    copy_scrubbed(std::io::stdin(), file, &scrubber, None);
    Ok(())
}

fn open_log(log: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(log)
}

/// Copies `from` to `log` through a scrubbing stream, capped, updating `captured` as it goes.
fn copy_scrubbed(
    mut from: impl std::io::Read + Send + 'static,
    mut log: std::fs::File,
    scrubber: &Scrubber,
    captured: Option<&Mutex<Captured>>,
) {
    let mut stream = scrubber.stream();
    let mut written: u64 = log.metadata().map(|m| m.len()).unwrap_or(0);
    let mut dropped: u64 = 0;
    let mut emit = |text: &str, log: &mut std::fs::File| {
        if text.is_empty() {
            return;
        }
        let room = usize::try_from(LOG_LIMIT.saturating_sub(written)).unwrap_or(usize::MAX);
        let mut keep = text.len().min(room);
        while !text.is_char_boundary(keep) {
            keep -= 1;
        }
        if keep > 0 && log.write_all(text.as_bytes().get(..keep).unwrap_or_default()).is_ok() {
            written += keep as u64;
        }
        dropped += (text.len() - keep) as u64;
        if let Some(c) = captured {
            let mut c = c.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            c.tail.push_str(text);
            if c.tail.len() > TAIL_KEPT {
                let mut start = c.tail.len() - TAIL_KEPT;
                while !c.tail.is_char_boundary(start) {
                    start += 1;
                }
                c.tail.drain(..start);
            }
        }
    };
    // One thread reads; this one scrubs and writes, and on a pause lets out every complete line held back.
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(4);
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if tx.send(buf.get(..n).unwrap_or_default().to_vec()).is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    });
    loop {
        let text = match rx.recv_timeout(PAUSE) {
            Ok(chunk) => stream.push(&chunk),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => stream.flush_lines(),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        };
        emit(&text, &mut log);
        if let Some(c) = captured {
            c.lock().unwrap_or_else(std::sync::PoisonError::into_inner).held = stream.peek();
        }
    }
    emit(&stream.finish(), &mut log);
    if dropped > 0 {
        let _ = writeln!(
            log,
            "\n[deployd: the log reached {LOG_LIMIT} bytes; {dropped} more bytes of output were dropped]"
        );
    }
    if let Some(c) = captured {
        let mut c = c.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        c.held.clear();
        c.ended = true;
    }
}

/// The last `max` bytes of a file, read from its end (never the whole file), on a character boundary.
pub(crate) fn file_tail(path: &Path, max: usize) -> String {
    let Ok(mut file) = std::fs::File::open(path) else { return String::new() };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let from = len.saturating_sub(max as u64);
    if file.seek(std::io::SeekFrom::Start(from)).is_err() {
        return String::new();
    }
    let mut bytes = Vec::with_capacity(max.min(1 << 20));
    let _ = file.take(max as u64).read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes);
    crate::local::tail_of(&text, max)
}

fn encode(scrubber: &Scrubber) -> String {
    scrubber
        .expose_values()
        .map(|v| v.iter().map(|b| format!("{b:02x}")).collect::<String>())
        .collect::<Vec<_>>()
        .join(",")
}

fn decode(encoded: &str) -> Option<Scrubber> {
    let mut values = Vec::new();
    for item in encoded.split(',').filter(|s| !s.is_empty()) {
        let bytes: Option<Vec<u8>> = (0..item.len())
            .step_by(2)
            .map(|i| item.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
            .collect();
        values.push(SecretValue::new(String::from_utf8(bytes?).ok()?));
    }
    Some(Scrubber::new(values.iter()))
}

/// The relay argv of a binary that runs [`run_log_relay`] on `log-relay <log>`.
#[must_use]
pub fn relay_command(binary: impl Into<PathBuf>) -> Vec<String> {
    vec![binary.into().display().to_string(), "log-relay".to_owned()]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn secrets_cross_to_a_relay_and_back() {
        let values = [SecretValue::new("first-secret"), SecretValue::new("zweites-gëheimnis")];
        let scrubber = Scrubber::new(values.iter());
        let back = decode(&encode(&scrubber)).unwrap();
        assert_eq!(back.scrub("first-secret zweites-gëheimnis"), "*** ***");
        assert!(decode("zz").is_none());
        assert!(decode("").unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_pumped_stream_is_scrubbed_capped_and_kept_as_a_tail() {
        let dir = deploy_testkit::fixtures::temp_dir("output-pump");
        let log = dir.join("run.log");
        let scrubber = Scrubber::new([&SecretValue::new("pumped-secret-value")]);
        let (mut writer, output) = pump_writer(&log, &scrubber).unwrap();
        // Written in pieces that cut the value, then far past the log's cap.
        writer.write_all(b"head pumped-sec").unwrap();
        writer.write_all(b"ret-value mid\n").unwrap();
        let line = vec![b'x'; 1024 * 1024];
        for _ in 0..9 {
            writer.write_all(&line).unwrap();
        }
        writer.write_all(b"\nlast pumped-secret-value\n").unwrap();
        drop(writer);
        output.settle(Duration::from_secs(10)).await;
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.starts_with("head *** mid\n"), "{}", &text[..40]);
        assert!(!text.contains("pumped-secret"), "scrubbed before written");
        assert!(text.len() as u64 <= LOG_LIMIT + 200, "capped: {}", text.len());
        assert!(text.contains("more bytes of output were dropped"), "and says so");
        assert!(output.tail(4096).ends_with("xxx\nlast ***"), "the tail is of the whole stream, scrubbed");
        let end = file_tail(&log, 200);
        assert!(end.len() <= 200 && end.ends_with("were dropped]"), "read from the end: {end}");
    }
}
