//! The compressions met in kernel packages: .deb data members and kernel
//! modules come as xz, zstd, gzip or plain. All decoders are pure Rust.

use std::io::{self, Read};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Compression {
    Plain,
    Gzip,
    Xz,
    Zstd,
}

impl Compression {
    pub(crate) const ALL: [Compression; 4] = [
        Compression::Plain,
        Compression::Xz,
        Compression::Zstd,
        Compression::Gzip,
    ];

    /// What the compression adds to a file name: `.xz`, `.zst`, `.gz`, or nothing.
    pub(crate) fn suffix(self) -> &'static str {
        match self {
            Compression::Plain => "",
            Compression::Gzip => ".gz",
            Compression::Xz => ".xz",
            Compression::Zstd => ".zst",
        }
    }

    /// Splits a known compression suffix off a file name:
    /// `kvm.ko.xz` -> (`kvm.ko`, Xz), `kvm.ko` -> (`kvm.ko`, Plain).
    pub(crate) fn split_suffix(file_name: &str) -> (&str, Compression) {
        Self::ALL
            .into_iter()
            .filter(|&kind| kind != Compression::Plain)
            .find_map(|kind| {
                file_name
                    .strip_suffix(kind.suffix())
                    .map(|stem| (stem, kind))
            })
            .unwrap_or((file_name, Compression::Plain))
    }

    /// Wraps `input` in the matching decoder.
    pub(crate) fn decoder<'a>(self, input: impl Read + 'a) -> io::Result<Box<dyn Read + 'a>> {
        Ok(match self {
            Compression::Plain => Box::new(input),
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(input)),
            Compression::Xz => Box::new(lzma_rust2::XzReader::new(input, true)),
            Compression::Zstd => Box::new(
                ruzstd::decoding::StreamingDecoder::new(input)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?,
            ),
        })
    }

    /// Decompresses a whole in-memory buffer.
    pub(crate) fn decompress(self, data: &[u8]) -> io::Result<Vec<u8>> {
        if self == Compression::Plain {
            return Ok(data.to_vec());
        }
        let mut out = Vec::with_capacity(data.len() * 4);
        self.decoder(data)?.read_to_end(&mut out)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn splits_suffixes() {
        assert_eq!(
            Compression::split_suffix("kvm.ko.xz"),
            ("kvm.ko", Compression::Xz)
        );
        assert_eq!(
            Compression::split_suffix("data.tar.zst"),
            ("data.tar", Compression::Zstd)
        );
        assert_eq!(
            Compression::split_suffix("a.ko.gz"),
            ("a.ko", Compression::Gzip)
        );
        assert_eq!(
            Compression::split_suffix("kvm.ko"),
            ("kvm.ko", Compression::Plain)
        );
    }

    #[test]
    fn gzip_round_trip() {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(b"depends=kvm").unwrap();
        let packed = encoder.finish().unwrap();
        assert_eq!(
            Compression::Gzip.decompress(&packed).unwrap(),
            b"depends=kvm"
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for kind in [Compression::Gzip, Compression::Xz, Compression::Zstd] {
            assert!(kind.decompress(b"definitely not compressed").is_err());
        }
    }
}
