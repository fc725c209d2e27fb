//! The format of a stored object: one or more zstd frames holding the file's bytes, followed by a
//! fixed 64-byte zstd *skippable frame* (RFC 8878 §3.1.2) carrying the SHA-256 and size of the
//! uncompressed content.
//!
//! Why a trailer inside the zstd stream: any zstd decoder (including the `zstd` command) skips it,
//! so an object is still a plain `.zst` file for a DBA with nothing but standard tools; and the
//! checksum travels with the object, so the catalog can be rebuilt from storage alone (DESIGN §1).
//! It is a trailer rather than a header because the checksum is only known once the whole body has
//! streamed through.

/// Total size of the trailer frame.
pub const TRAILER_LEN: usize = 64;
/// Skippable frame magic 0x184D2A5E (any of 0x184D2A50..=0x184D2A5F is skippable).
const SKIPPABLE_MAGIC: u32 = 0x184D_2A5E;
const TRAILER_PAYLOAD_LEN: u32 = 56;
const TRAILER_TAG: &[u8; 8] = b"WALARCv1";

/// Checksum and size of an object's uncompressed content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trailer {
    pub sha256: [u8; 32],
    pub size: u64,
}

impl Trailer {
    pub fn encode(&self) -> [u8; TRAILER_LEN] {
        let mut out = [0u8; TRAILER_LEN];
        out[0..4].copy_from_slice(&SKIPPABLE_MAGIC.to_le_bytes());
        out[4..8].copy_from_slice(&TRAILER_PAYLOAD_LEN.to_le_bytes());
        out[8..16].copy_from_slice(TRAILER_TAG);
        out[16..48].copy_from_slice(&self.sha256);
        out[48..56].copy_from_slice(&self.size.to_le_bytes());
        // 56..64: reserved flags, zero.
        out
    }

    /// Parses the last [`TRAILER_LEN`] bytes of an object.
    pub fn decode(buf: &[u8]) -> Option<Trailer> {
        if buf.len() != TRAILER_LEN
            || buf[0..4] != SKIPPABLE_MAGIC.to_le_bytes()
            || buf[4..8] != TRAILER_PAYLOAD_LEN.to_le_bytes()
            || &buf[8..16] != TRAILER_TAG
        {
            return None;
        }
        let mut sha256 = [0u8; 32];
        sha256.copy_from_slice(&buf[16..48]);
        let mut size = [0u8; 8];
        size.copy_from_slice(&buf[48..56]);
        Some(Trailer {
            sha256,
            size: u64::from_le_bytes(size),
        })
    }

    pub fn sha256_hex(&self) -> String {
        hex::encode(self.sha256)
    }
}

/// Uncompressed bytes per zstd frame written by [`Compressor`].
pub const FRAME_BYTES: usize = 1 << 20;

/// Incremental zstd compression over chunks, appending compressed bytes to a caller's buffer.
///
/// The input is cut into frames of [`FRAME_BYTES`], each compressed in one call from one
/// contiguous buffer. A single streamed frame costs more: zstd's streaming input buffer is only
/// a window plus a block long, so after it wraps, blocks are matched in its slower "external
/// dictionary" mode. Measured with `perf` on the server during `bench/compare.sh`'s drain
/// (100 segments, level 1): that mode took about half of all compression time, and framing cut
/// zstd's CPU from 3.7 s to 3.3 s. Matches across a frame boundary are lost, which cost 0.06%
/// in size on the benchmark's WAL (`zstd -b1` against `zstd -b1 -B1048576`).
/// The result is an ordinary multi-frame zstd stream; every frame carries its own checksum.
pub struct Compressor {
    cctx: zstd::bulk::Compressor<'static>,
    pending: Vec<u8>,
    scratch: Vec<u8>,
    frames: usize,
}

impl Compressor {
    pub fn new(level: i32) -> std::io::Result<Self> {
        let mut cctx = zstd::bulk::Compressor::new(level)?;
        // The frame checksum lets any zstd tool detect corruption of a stored object on its own.
        cctx.set_parameter(zstd::stream::raw::CParameter::ChecksumFlag(true))?;
        Ok(Compressor {
            cctx,
            pending: Vec::new(),
            scratch: Vec::new(),
            frames: 0,
        })
    }

    pub fn write(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> std::io::Result<()> {
        while !input.is_empty() {
            if self.pending.is_empty() && input.len() >= FRAME_BYTES {
                // A whole frame in the caller's buffer: no copy.
                let (frame, rest) = input.split_at(FRAME_BYTES);
                self.frame(frame, out)?;
                input = rest;
                continue;
            }
            let take = (FRAME_BYTES - self.pending.len()).min(input.len());
            self.pending.extend_from_slice(&input[..take]);
            input = &input[take..];
            if self.pending.len() == FRAME_BYTES {
                let pending = std::mem::take(&mut self.pending);
                self.frame(&pending, out)?;
                self.pending = pending;
                self.pending.clear();
            }
        }
        Ok(())
    }

    /// Compresses what is left; an empty input still makes one (empty) frame, so the object is
    /// a valid zstd stream.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> std::io::Result<()> {
        if !self.pending.is_empty() || self.frames == 0 {
            let pending = std::mem::take(&mut self.pending);
            self.frame(&pending, out)?;
        }
        Ok(())
    }

    fn frame(&mut self, src: &[u8], out: &mut Vec<u8>) -> std::io::Result<()> {
        self.scratch.clear();
        self.scratch
            .reserve(zstd::zstd_safe::compress_bound(src.len()));
        self.cctx.compress_to_buffer(src, &mut self.scratch)?;
        out.extend_from_slice(&self.scratch);
        self.frames += 1;
        Ok(())
    }
}

/// Largest zstd window an uploaded body may ask for: 8 MiB (`WindowLogMax` 23). zstd refuses a
/// frame that needs more, so a body cannot make the server allocate 128 MiB or more for one
/// upload. `wal-archive push --compress-level` compresses with at most this window.
pub const UPLOAD_WINDOW_LOG_MAX: u32 = 23;

/// Incremental zstd decompression over chunks; skippable frames (our trailer) produce no output.
pub struct Decompressor {
    decoder: zstd::stream::raw::Decoder<'static>,
    scratch: Vec<u8>,
    /// zstd's hint after the last call: 0 once a frame is completely decoded and flushed, and
    /// nothing of the next one has been given yet.
    hint: usize,
}

impl Decompressor {
    pub fn new() -> std::io::Result<Self> {
        Ok(Decompressor {
            decoder: zstd::stream::raw::Decoder::new()?,
            scratch: vec![0u8; 128 * 1024],
            hint: 1,
        })
    }

    /// A decompressor for bodies clients send, refusing frames with a window above
    /// [`UPLOAD_WINDOW_LOG_MAX`].
    pub fn for_upload() -> std::io::Result<Self> {
        let mut d = Decompressor::new()?;
        d.decoder
            .set_parameter(zstd::stream::raw::DParameter::WindowLogMax(
                UPLOAD_WINDOW_LOG_MAX,
            ))?;
        Ok(d)
    }

    /// Feeds compressed `input`; calls `sink` with each piece of decompressed output.
    pub fn write(
        &mut self,
        mut input: &[u8],
        mut sink: impl FnMut(&[u8]) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        use zstd::stream::raw::{InBuffer, Operation, OutBuffer};
        loop {
            let mut inb = InBuffer::around(input);
            let mut outb = OutBuffer::around(&mut self.scratch[..]);
            let hint = self.decoder.run(&mut inb, &mut outb)?;
            let (consumed, produced) = (inb.pos(), outb.pos());
            // A call that moved nothing after a frame ended only says what the next frame
            // would need; the stream still ends on a whole frame.
            if consumed > 0 || produced > 0 || self.hint != 0 {
                self.hint = hint;
            }
            if produced > 0 {
                sink(&self.scratch[..produced])?;
            }
            input = &input[consumed..];
            // Done when all input is consumed and the decoder had no more output to give.
            if input.is_empty() && produced < self.scratch.len() {
                return Ok(());
            }
        }
    }

    /// Whether everything fed so far is whole frames: the last frame ended (with its
    /// checksum, when it has one) and no byte of another one followed. A stream cut inside a
    /// frame, or with bytes after its last frame that are not a whole frame, is not complete;
    /// neither is an empty one.
    pub fn is_complete(&self) -> bool {
        self.hint == 0
    }
}

/// A small object whole in the object format (zstd and the checksum trailer): records.
pub fn seal_small(plain: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut c = Compressor::new(3)?;
    let mut out = Vec::new();
    c.write(plain, &mut out)?;
    c.finish(&mut out)?;
    let mut h = pgwal::checksum::Sha256::new();
    h.update(plain);
    out.extend_from_slice(
        &Trailer {
            sha256: h.finish(),
            size: plain.len() as u64,
        }
        .encode(),
    );
    Ok(out)
}

/// The content of an object written by [`seal_small`], checked against its trailer.
pub fn open_small(stored: &[u8]) -> Result<Vec<u8>, String> {
    if stored.len() < TRAILER_LEN {
        return Err(format!("{} bytes is too short", stored.len()));
    }
    let trailer =
        Trailer::decode(&stored[stored.len() - TRAILER_LEN..]).ok_or("no valid trailer")?;
    let mut d = Decompressor::new().map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    d.write(stored, |b| {
        out.extend_from_slice(b);
        Ok(())
    })
    .map_err(|e| e.to_string())?;
    if !d.is_complete() {
        return Err("it ends inside a zstd frame".into());
    }
    if sha256_hex(&out) != trailer.sha256_hex() || out.len() as u64 != trailer.size {
        return Err("its content does not match its checksum".into());
    }
    Ok(out)
}

/// SHA-256 in hex of a byte slice.
pub fn sha256_hex(data: &[u8]) -> String {
    pgwal::checksum::sha256_hex(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_trailer_is_plain_zstd() {
        let data: Vec<u8> = (0..300_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let mut c = Compressor::new(3).expect("encoder");
        let mut out = Vec::new();
        for chunk in data.chunks(7777) {
            c.write(chunk, &mut out).expect("compress");
        }
        c.finish(&mut out).expect("finish");
        let trailer = Trailer {
            sha256: {
                let mut h = pgwal::checksum::Sha256::new();
                h.update(&data);
                h.finish()
            },
            size: data.len() as u64,
        };
        out.extend_from_slice(&trailer.encode());
        // A standard decoder ignores the trailer.
        let plain = zstd::decode_all(&out[..]).expect("standard zstd decodes");
        assert_eq!(plain, data);
        // Our incremental decoder too, with any chunking.
        let mut d = Decompressor::new().expect("decoder");
        let mut got = Vec::new();
        for chunk in out.chunks(1000) {
            d.write(chunk, |b| {
                got.extend_from_slice(b);
                Ok(())
            })
            .expect("decompress");
        }
        assert_eq!(got, data);
        assert_eq!(
            Trailer::decode(&out[out.len() - TRAILER_LEN..]),
            Some(trailer)
        );
    }

    #[test]
    fn frames_of_any_input_shape_decode_to_the_input() {
        let big: Vec<u8> = (0..(2 * FRAME_BYTES + 4321) as u32)
            .map(|i| (i % 253) as u8 ^ ((i >> 12) as u8))
            .collect();
        // (input, size of the writes)
        for (data, write) in [(Vec::new(), 1), (big.clone(), big.len()), (big, 65_536)] {
            let mut c = Compressor::new(1).expect("encoder");
            let mut out = Vec::new();
            for chunk in data.chunks(write) {
                c.write(chunk, &mut out).expect("compress");
            }
            c.finish(&mut out).expect("finish");
            assert_eq!(zstd::decode_all(&out[..]).expect("decodes"), data);
            let mut d = Decompressor::new().expect("decoder");
            let mut got = Vec::new();
            for chunk in out.chunks(4096) {
                d.write(chunk, |b| {
                    got.extend_from_slice(b);
                    Ok(())
                })
                .expect("decompress");
            }
            assert_eq!(got, data);
        }
    }

    /// zstd's framing tells a complete stream from a cut or padded one: what an upload's body
    /// must be before the server acknowledges it.
    #[test]
    fn completeness_of_frame_streams() {
        // Whatever the size, also one that is a multiple of the decoder's output buffer.
        for n in [131_072u32, 1 << 20, 1_000_000] {
            let data: Vec<u8> = (0..n)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                .collect();
            let whole = zstd::encode_all(&data[..], 1).expect("compress");
            let mut d = Decompressor::for_upload().expect("decoder");
            d.write(&whole, |_| Ok(())).expect("decode");
            assert!(d.is_complete(), "{n} bytes in one piece");
        }
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 241) as u8).collect();
        let mut c = Compressor::new(1).expect("encoder");
        let mut whole = Vec::new();
        c.write(&data, &mut whole).expect("compress");
        c.finish(&mut whole).expect("finish");
        let decode = |bytes: &[u8]| -> std::io::Result<(Vec<u8>, bool)> {
            let mut d = Decompressor::for_upload()?;
            let mut out = Vec::new();
            for chunk in bytes.chunks(999) {
                d.write(chunk, |b| {
                    out.extend_from_slice(b);
                    Ok(())
                })?;
            }
            Ok((out, d.is_complete()))
        };
        assert_eq!(decode(&whole).expect("whole"), (data.clone(), true));
        // With our trailer (a skippable frame) after it: still complete.
        let mut trailed = whole.clone();
        trailed.extend_from_slice(
            &Trailer {
                sha256: [7; 32],
                size: 1,
            }
            .encode(),
        );
        assert!(decode(&trailed).expect("trailed").1);
        // The frame checksum cut off: all data came out, but the frame never ended.
        let (out, complete) = decode(&whole[..whole.len() - 4]).expect("cut");
        assert_eq!(out, data);
        assert!(!complete);
        // Bytes after the last frame: too few for a frame header, or not a frame at all.
        for tail in [&b"\x28\xb5"[..], &b"garbage!"[..]] {
            let mut padded = whole.clone();
            padded.extend_from_slice(tail);
            // Either decoding fails, or the stream does not end on a whole frame.
            if let Ok((_, complete)) = decode(&padded) {
                assert!(!complete, "{tail:?}");
            }
        }
        // Nothing at all is not a stream.
        assert!(!decode(&[]).expect("empty").1);
        // A frame whose window is above the upload limit is refused.
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 19).expect("encoder");
        enc.set_parameter(zstd::stream::raw::CParameter::WindowLog(27))
            .expect("window");
        std::io::Write::write_all(&mut enc, &data).expect("write");
        let wide = enc.finish().expect("finish");
        assert!(decode(&wide).is_err(), "a 128 MiB window must be refused");
        let mut plain = Decompressor::new().expect("decoder");
        plain
            .write(&wide, |_| Ok(()))
            .expect("stored objects keep the default limit");
    }

    #[test]
    fn trailer_rejects_garbage() {
        assert_eq!(Trailer::decode(&[0u8; TRAILER_LEN]), None);
        assert_eq!(Trailer::decode(&[0u8; 10]), None);
    }
}
