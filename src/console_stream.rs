//! The guest's verdicts cross the emulated serial console compressed. Every byte there costs the
//! emulator an I/O exit and the guest kernel its UART driver's work (about 5 µs a byte under QEMU
//! TCG and 80 µs under Bochs), and a run's verdict lines repeat themselves: the same keys, ids
//! that differ in a word, the same diagnosis for every row of a finding. One deflate stream over
//! all of a boot's verdicts, flushed after each (a sync flush: each chunk decodes as soon as it
//! arrives), carries a whole SVM run in about a tenth of the bytes.
//!
//! A chunk decodes only after every chunk before it, so each carries its sequence number and the
//! CRC-32 of what it decodes to, outside the compressed data: a lost, cut or garbled chunk stops
//! the stream there, with a reason, and never yields a verdict decoded from the wrong history.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use flate2::{Compress, Compression, Crc, Decompress, FlushCompress, FlushDecompress, Status};
use thiserror::Error;

/// The guest's side: one per boot.
pub struct Deflater {
    compress: Compress,
    sequence: u64,
}

impl Default for Deflater {
    fn default() -> Self {
        Self {
            // Raw deflate: the stream's framing is the sequence number and CRC of each chunk.
            compress: Compress::new(Compression::best(), false),
            sequence: 0,
        }
    }
}

impl Deflater {
    /// `text` as the next chunk: `<sequence> <crc32 hex> <base64 deflate>`.
    pub fn chunk(&mut self, text: &str) -> String {
        let mut out = Vec::with_capacity(text.len() / 2 + 64);
        let mut input = text.as_bytes();
        loop {
            let before = self.compress.total_in();
            let status = self
                .compress
                .compress_vec(input, &mut out, FlushCompress::Sync)
                .expect("deflate into a growing buffer cannot fail");
            input = &input[(self.compress.total_in() - before) as usize..];
            // Done when everything went in and the flush fit (spare room left).
            if input.is_empty() && out.len() < out.capacity() && status != Status::BufError {
                break;
            }
            out.reserve(out.capacity().max(64));
        }
        let mut crc = Crc::new();
        crc.update(text.as_bytes());
        let line = format!(
            "{} {:08x} {}",
            self.sequence,
            crc.sum(),
            BASE64.encode(&out)
        );
        self.sequence += 1;
        line
    }
}

#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum StreamError {
    #[error("chunk {got} arrived where chunk {wanted} was due (one was lost or cut)")]
    OutOfSequence { wanted: u64, got: u64 },
    #[error("chunk {0} is not `<sequence> <crc32> <base64>`")]
    Malformed(String),
    #[error("chunk {sequence} does not decode: {why}")]
    Undecodable { sequence: u64, why: String },
    #[error("chunk {0} decodes to other bytes than the guest sent (CRC-32 differs)")]
    Corrupt(u64),
    #[error("the stream broke earlier: {0}")]
    Broken(Box<StreamError>),
}

/// The host's side: one per boot, fed every chunk in the order the lines arrived.
pub struct Inflater {
    decompress: Decompress,
    next: u64,
    broken: Option<StreamError>,
}

impl Default for Inflater {
    fn default() -> Self {
        Self {
            decompress: Decompress::new(false),
            next: 0,
            broken: None,
        }
    }
}

impl Inflater {
    /// The text of `chunk`; after the first error, every later chunk is refused with it.
    pub fn text(&mut self, chunk: &str) -> Result<String, StreamError> {
        if let Some(error) = &self.broken {
            return Err(StreamError::Broken(Box::new(error.clone())));
        }
        let result = self.decode(chunk);
        if let Err(error) = &result {
            self.broken = Some(error.clone());
        }
        result
    }

    fn decode(&mut self, chunk: &str) -> Result<String, StreamError> {
        let malformed = || StreamError::Malformed(chunk.chars().take(40).collect());
        let mut fields = chunk.split(' ');
        let (Some(sequence), Some(crc), Some(data), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err(malformed());
        };
        let sequence: u64 = sequence.parse().map_err(|_| malformed())?;
        let crc = u32::from_str_radix(crc, 16).map_err(|_| malformed())?;
        if sequence != self.next {
            return Err(StreamError::OutOfSequence {
                wanted: self.next,
                got: sequence,
            });
        }
        let undecodable = |why: String| StreamError::Undecodable { sequence, why };
        let compressed = BASE64
            .decode(data)
            .map_err(|error| undecodable(error.to_string()))?;
        let mut text = Vec::with_capacity(compressed.len() * 8);
        let mut input = &compressed[..];
        loop {
            let before = self.decompress.total_in();
            self.decompress
                .decompress_vec(input, &mut text, FlushDecompress::Sync)
                .map_err(|error| undecodable(error.to_string()))?;
            input = &input[(self.decompress.total_in() - before) as usize..];
            if input.is_empty() && text.len() < text.capacity() {
                break;
            }
            text.reserve(text.capacity().max(256));
        }
        let mut check = Crc::new();
        check.update(&text);
        if check.sum() != crc {
            return Err(StreamError::Corrupt(sequence));
        }
        self.next += 1;
        String::from_utf8(text).map_err(|_| StreamError::Corrupt(sequence))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts() -> Vec<String> {
        (0..200)
            .map(|i| {
                // As a real XFAIL line: a value that changes, a diagnosis that repeats.
                format!(
                    "{{\"id\":\"svm/pt_page_unmapped_read_offset/emulated\",\"status\":\"xfail\",\
                     \"expected\":{{\"exit_info_2\":\"{:#x}\"}},\"diagnosis\":\"expected failure: the \
                     open finding \\\"page-aligned GPA\\\" (docs/findings/page-aligned-gpa.md)\\n\
                     paths disagree: exit_info_2 from the emulator, from the hardware path\",\
                     \"duration_ms\":{i}}}",
                    0x150000 + 8 * i
                )
            })
            .collect()
    }

    #[test]
    fn chunks_round_trip_and_shrink() {
        let mut deflater = Deflater::default();
        let mut inflater = Inflater::default();
        let (mut plain, mut sent) = (0, 0);
        for text in texts() {
            let chunk = deflater.chunk(&text);
            assert!(!chunk.contains('@') && !chunk.contains('\n'), "{chunk}");
            plain += text.len();
            sent += chunk.len();
            assert_eq!(inflater.text(&chunk).unwrap(), text);
        }
        assert!(sent * 4 < plain, "{sent} bytes sent for {plain}");
    }

    #[test]
    fn a_lost_or_damaged_chunk_stops_the_stream() {
        let chunks: Vec<String> = {
            let mut deflater = Deflater::default();
            texts().iter().map(|text| deflater.chunk(text)).collect()
        };
        let mut lost = Inflater::default();
        lost.text(&chunks[0]).unwrap();
        assert_eq!(
            lost.text(&chunks[2]),
            Err(StreamError::OutOfSequence { wanted: 1, got: 2 })
        );
        assert!(matches!(lost.text(&chunks[1]), Err(StreamError::Broken(_))));
        // The right sequence number on another chunk's data: the CRC or the decoder says so.
        let mut forged = Inflater::default();
        forged.text(&chunks[0]).unwrap();
        let (_, data) = chunks[2].rsplit_once(' ').unwrap();
        let (head, _) = chunks[1].rsplit_once(' ').unwrap();
        let error = forged.text(&format!("{head} {data}")).unwrap_err();
        assert!(
            matches!(
                error,
                StreamError::Corrupt(1) | StreamError::Undecodable { sequence: 1, .. }
            ),
            "{error:?}"
        );
        let mut cut = Inflater::default();
        let short = &chunks[0][..chunks[0].len() - 6];
        assert!(cut.text(short).is_err());
        assert!(matches!(
            Inflater::default().text("7 zz"),
            Err(StreamError::Malformed(_))
        ));
    }
}
