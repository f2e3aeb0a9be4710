//! Lines of text from files, pipes and standard input, read into a buffer of bounded size: a
//! line longer than [`MAX_LINE_BYTES`] is refused as it passes the limit and skipped unread, so
//! `/dev/zero` or a file without line ends never fills memory.

use std::io::{self, Read};
use std::os::fd::RawFd;

/// Longest line read, in bytes without its line end. A longer line is refused as soon as it
/// passes this length, and the rest of it is skipped unread, so that memory stays bounded
/// whatever the input (`/dev/zero`, a file without line ends).
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// Bytes asked of the source per read.
const READ_CHUNK: usize = 64 << 10;

/// The UTF-8 byte-order mark that some editors put at the start of a file: skipped there.
const BYTE_ORDER_MARK: &[u8] = b"\xEF\xBB\xBF";

/// One line from a [`LineReader`].
#[derive(Debug, PartialEq, Eq)]
pub enum Line<'a> {
    /// The line's bytes, line end included when there was one.
    Text(&'a [u8]),
    /// A line longer than [`MAX_LINE_BYTES`]: refused, and its remaining bytes skipped.
    TooLong,
}

/// What is wrong with a line that is not UTF-8, and where: the first bad byte, counted from 1.
pub fn describe_utf8_error(error: std::str::Utf8Error) -> String {
    format!("not valid UTF-8 (byte {})", error.valid_up_to() + 1)
}

/// Reads lines from a byte source into a buffer of bounded size.
pub struct LineReader<R> {
    source: R,
    /// Polled before a read would wait, when the source is a pipe or a terminal.
    descriptor: Option<RawFd>,
    buffer: Vec<u8>,
    /// The unread bytes are `buffer[start..end]`.
    start: usize,
    end: usize,
    at_end: bool,
    /// Inside a line that was refused as too long: skip to its end.
    skipping: bool,
    /// A line was returned already: a byte-order mark is no longer the start of the source.
    started: bool,
}

impl<R: Read> LineReader<R> {
    pub fn new(source: R, descriptor: Option<RawFd>) -> Self {
        let buffer = vec![0; MAX_LINE_BYTES + 1 + READ_CHUNK];
        Self { source, descriptor, buffer, start: 0, end: 0, at_end: false, skipping: false, started: false }
    }

    /// Whether the next line can be returned without reading from the source, or a read would
    /// not wait (the source has data, has ended, or is a file).
    pub fn next_line_is_ready(&self) -> bool {
        if self.at_end || self.buffer[self.start..self.end].contains(&b'\n') {
            return true;
        }
        let Some(descriptor) = self.descriptor else { return true };
        let mut poll = libc::pollfd { fd: descriptor, events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd; a zero timeout returns at once.
        unsafe { libc::poll(&mut poll, 1, 0) != 0 }
    }

    /// Reads more bytes after the unread ones; false at the end of the source.
    fn fill(&mut self) -> io::Result<bool> {
        if self.start > 0 {
            self.buffer.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let room = (self.buffer.len() - self.end).min(READ_CHUNK);
        let read = loop {
            match self.source.read(&mut self.buffer[self.end..self.end + room]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                read => break read?,
            }
        };
        self.end += read;
        self.at_end = read == 0;
        Ok(read > 0)
    }

    /// The next line, without the byte-order mark that may start the source; `None` at the end.
    pub fn next_line(&mut self) -> io::Result<Option<Line<'_>>> {
        let first = !self.started;
        self.started = true;
        Ok(self.next_raw_line()?.map(|line| match line {
            Line::Text(bytes) if first => Line::Text(bytes.strip_prefix(BYTE_ORDER_MARK).unwrap_or(bytes)),
            other => other,
        }))
    }

    fn next_raw_line(&mut self) -> io::Result<Option<Line<'_>>> {
        loop {
            let unread = &self.buffer[self.start..self.end];
            match unread.iter().position(|&byte| byte == b'\n') {
                Some(newline) if self.skipping => {
                    self.start += newline + 1;
                    self.skipping = false;
                }
                Some(newline) if newline > MAX_LINE_BYTES => {
                    self.start += newline + 1;
                    return Ok(Some(Line::TooLong));
                }
                Some(newline) => {
                    let line = self.start..self.start + newline + 1;
                    self.start = line.end;
                    return Ok(Some(Line::Text(&self.buffer[line])));
                }
                None if self.skipping => {
                    self.start = self.end;
                    if !self.fill()? {
                        return Ok(None);
                    }
                }
                None if unread.len() > MAX_LINE_BYTES => {
                    self.start = self.end;
                    self.skipping = true;
                    return Ok(Some(Line::TooLong));
                }
                None if self.at_end || !self.fill()? => {
                    if self.start == self.end {
                        return Ok(None);
                    }
                    let line = self.start..self.end;
                    self.start = self.end;
                    return Ok(Some(Line::Text(&self.buffer[line])));
                }
                None => {}
            }
        }
    }
}
