//! Splits a tar stream into its entries as the bytes arrive, without buffering file contents.
//!
//! `BASE_BACKUP` sends each tablespace as one tar archive in CopyData chunks of arbitrary size.
//! [`TarSplitter::feed`] takes one chunk and yields [`TarEvent`]s whose data are zero-copy slices
//! of that chunk, so memory is one 512-byte header plus whatever the caller keeps.
//!
//! PostgreSQL writes plain ustar headers (`src/port/tar.c`: names up to 99 bytes, base-256 sizes
//! for files of 8 GiB and more) and, since version 15, leaves out the two zero blocks that end an
//! archive (the client adds them). GNU long-name entries (`L`, `K`) are accepted as well, pax
//! headers are skipped, and anything else is refused rather than guessed at.

use bytes::Bytes;

const BLOCK: usize = 512;
/// Longest GNU long name / link accepted (PostgreSQL's MAXPGPATH is 1024).
const MAX_LONG_NAME: u64 = 64 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
}

impl EntryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::File => "file",
            EntryKind::Dir => "dir",
            EntryKind::Symlink => "symlink",
        }
    }
}

/// One entry's header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryMeta {
    /// Relative, `/`-separated, without a trailing `/`.
    pub path: String,
    pub kind: EntryKind,
    pub size: u64,
    pub mode: u32,
    pub mtime: i64,
    pub link_target: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TarEvent {
    /// An entry begins. For a file, its content follows as `Data`, then `FileEnd`.
    Entry(EntryMeta),
    Data(Bytes),
    FileEnd,
}

#[derive(Debug, thiserror::Error)]
#[error("malformed tar stream: {0}")]
pub struct TarError(pub String);

#[derive(Debug)]
enum State {
    Header,
    Data {
        remaining: u64,
        padding: u64,
    },
    Skip {
        remaining: u64,
    },
    LongName {
        link: bool,
        remaining: u64,
        padding: u64,
    },
    End,
}

/// The incremental parser of one tar archive.
#[derive(Debug)]
pub struct TarSplitter {
    state: State,
    header: Vec<u8>,
    long_buf: Vec<u8>,
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    zero_blocks: u8,
}

impl Default for TarSplitter {
    fn default() -> Self {
        TarSplitter::new()
    }
}

fn padding(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

impl TarSplitter {
    pub fn new() -> Self {
        TarSplitter {
            state: State::Header,
            header: Vec::with_capacity(BLOCK),
            long_buf: Vec::new(),
            long_name: None,
            long_link: None,
            zero_blocks: 0,
        }
    }

    /// Consumes one chunk, appending the events it completes to `out`.
    pub fn feed(&mut self, chunk: &Bytes, out: &mut Vec<TarEvent>) -> Result<(), TarError> {
        let mut pos = 0;
        while pos < chunk.len() {
            let left = chunk.len() - pos;
            match &mut self.state {
                State::End => return Ok(()),
                State::Header => {
                    let n = (BLOCK - self.header.len()).min(left);
                    self.header.extend_from_slice(&chunk[pos..pos + n]);
                    pos += n;
                    if self.header.len() == BLOCK {
                        let block = std::mem::take(&mut self.header);
                        self.header.reserve(BLOCK);
                        self.on_header(&block, out)?;
                    }
                }
                State::Data { remaining, padding } => {
                    let n = (*remaining).min(left as u64) as usize;
                    if n > 0 {
                        out.push(TarEvent::Data(chunk.slice(pos..pos + n)));
                    }
                    pos += n;
                    *remaining -= n as u64;
                    if *remaining == 0 {
                        out.push(TarEvent::FileEnd);
                        self.state = State::Skip {
                            remaining: *padding,
                        };
                    }
                }
                State::Skip { remaining } => {
                    let n = (*remaining).min(left as u64) as usize;
                    pos += n;
                    *remaining -= n as u64;
                    if *remaining == 0 {
                        self.state = State::Header;
                    }
                }
                State::LongName {
                    link,
                    remaining,
                    padding,
                } => {
                    let n = (*remaining).min(left as u64) as usize;
                    self.long_buf.extend_from_slice(&chunk[pos..pos + n]);
                    pos += n;
                    *remaining -= n as u64;
                    if *remaining == 0 {
                        let mut name = std::mem::take(&mut self.long_buf);
                        while name.last() == Some(&0) {
                            name.pop();
                        }
                        if *link {
                            self.long_link = Some(name);
                        } else {
                            self.long_name = Some(name);
                        }
                        self.state = State::Skip {
                            remaining: *padding,
                        };
                    }
                }
            }
            if let State::Skip { remaining: 0 } = self.state {
                self.state = State::Header;
            }
        }
        Ok(())
    }

    /// The archive's bytes are all in: fails if they stopped inside an entry.
    pub fn finish(&self) -> Result<(), TarError> {
        match &self.state {
            State::End => Ok(()),
            State::Header if self.header.is_empty() => Ok(()),
            State::Skip { .. } => Ok(()),
            other => Err(TarError(format!(
                "the archive ended inside an entry ({other:?}, {} header bytes)",
                self.header.len()
            ))),
        }
    }

    fn on_header(&mut self, block: &[u8], out: &mut Vec<TarEvent>) -> Result<(), TarError> {
        if block.iter().all(|b| *b == 0) {
            self.zero_blocks += 1;
            if self.zero_blocks >= 2 {
                self.state = State::End;
            }
            return Ok(());
        }
        self.zero_blocks = 0;
        let h = tar::Header::from_byte_slice(block);
        check_checksum(block)?;
        let size = h
            .entry_size()
            .map_err(|e| TarError(format!("bad size field: {e}")))?;
        let ty = h.entry_type();
        if ty.is_gnu_longname() || ty.is_gnu_longlink() {
            if size > MAX_LONG_NAME {
                return Err(TarError(format!("a {size}-byte long name is not a path")));
            }
            self.long_buf.clear();
            self.state = State::LongName {
                link: ty.is_gnu_longlink(),
                remaining: size,
                padding: padding(size),
            };
            if size == 0 {
                self.state = State::Header;
            }
            return Ok(());
        }
        if ty.is_pax_global_extensions() || ty.is_pax_local_extensions() {
            self.state = State::Skip {
                remaining: size + padding(size),
            };
            return Ok(());
        }
        let kind = if ty.is_file() || ty == tar::EntryType::Continuous {
            EntryKind::File
        } else if ty.is_dir() {
            EntryKind::Dir
        } else if ty.is_symlink() {
            EntryKind::Symlink
        } else {
            return Err(TarError(format!(
                "entry type {:?} is not something PostgreSQL puts in a base backup",
                ty
            )));
        };
        let raw_path = match self.long_name.take() {
            Some(p) => p,
            None => h.path_bytes().into_owned(),
        };
        let path = clean_path(&raw_path)?;
        let link_target =
            match kind {
                EntryKind::Symlink => {
                    let raw = match self.long_link.take() {
                        Some(l) => l,
                        None => h
                            .link_name_bytes()
                            .map(|c| c.into_owned())
                            .unwrap_or_default(),
                    };
                    Some(String::from_utf8(raw).map_err(|_| {
                        TarError(format!("the symlink target of {path} is not UTF-8"))
                    })?)
                }
                _ => {
                    self.long_link = None;
                    None
                }
            };
        let mode = h
            .mode()
            .map_err(|e| TarError(format!("{path}: mode: {e}")))?
            & 0o7777;
        let mtime = h
            .mtime()
            .map_err(|e| TarError(format!("{path}: mtime: {e}")))?
            .min(i64::MAX as u64) as i64;
        let file_size = if kind == EntryKind::File { size } else { 0 };
        out.push(TarEvent::Entry(EntryMeta {
            path,
            kind,
            size: file_size,
            mode,
            mtime,
            link_target,
        }));
        if kind == EntryKind::File {
            if size == 0 {
                out.push(TarEvent::FileEnd);
            } else {
                self.state = State::Data {
                    remaining: size,
                    padding: padding(size),
                };
            }
        } else if size > 0 {
            self.state = State::Skip {
                remaining: size + padding(size),
            };
        }
        Ok(())
    }
}

/// The header checksum: the sum of all bytes with the checksum field counted as spaces.
fn check_checksum(block: &[u8]) -> Result<(), TarError> {
    let field = &block[148..156];
    let text: String = field
        .iter()
        .take_while(|b| **b != 0 && **b != b' ')
        .skip_while(|b| **b == b' ')
        .map(|b| *b as char)
        .collect();
    let text = text.trim();
    let stored = u32::from_str_radix(text, 8)
        .map_err(|_| TarError(format!("header checksum field {text:?} is not octal")))?;
    let sum: u32 = block
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                u32::from(b' ')
            } else {
                u32::from(*b)
            }
        })
        .sum();
    if sum != stored {
        return Err(TarError(format!(
            "header checksum {stored} does not match its content ({sum})"
        )));
    }
    Ok(())
}

/// A path as stored in the catalog: relative, `/`-separated, no `.`/`..` components, no
/// trailing `/`. Anything else is refused: these paths are written back by `restore`.
pub fn clean_path(raw: &[u8]) -> Result<String, TarError> {
    let text = std::str::from_utf8(raw).map_err(|_| {
        TarError(format!(
            "path {:?} is not UTF-8",
            String::from_utf8_lossy(raw)
        ))
    })?;
    let mut parts = Vec::new();
    for part in text.split('/') {
        match part {
            "" | "." => continue,
            ".." => return Err(TarError(format!("path {text:?} leaves its directory"))),
            p if p.contains('\0') => return Err(TarError(format!("path {text:?} has a NUL"))),
            p => parts.push(p),
        }
    }
    if text.starts_with('/') || parts.is_empty() {
        return Err(TarError(format!("path {text:?} is not a relative path")));
    }
    Ok(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive() -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_path("global/").expect("path");
        h.set_mode(0o700);
        h.set_size(0);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        b.append(&h, std::io::empty()).expect("dir");
        let content: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let mut h = tar::Header::new_ustar();
        h.set_path("global/pg_control").expect("path");
        h.set_mode(0o600);
        h.set_size(content.len() as u64);
        h.set_mtime(1_700_000_001);
        h.set_cksum();
        b.append(&h, &content[..]).expect("file");
        let mut h = tar::Header::new_ustar();
        h.set_path("PG_VERSION").expect("path");
        h.set_mode(0o600);
        h.set_size(0);
        h.set_cksum();
        b.append(&h, std::io::empty()).expect("empty");
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_path("pg_tblspc/16384").expect("path");
        h.set_link_name("/srv/ts").expect("link");
        h.set_mode(0o777);
        h.set_size(0);
        h.set_cksum();
        b.append(&h, std::io::empty()).expect("symlink");
        let long = format!("base/1/{}", "x".repeat(150));
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o600);
        h.set_size(3);
        b.append_data(&mut h, &long, &b"abc"[..]).expect("long");
        b.into_inner().expect("finish")
    }

    fn split(data: &[u8], chunk: usize) -> Vec<(EntryMeta, Vec<u8>)> {
        let mut s = TarSplitter::new();
        let mut events = Vec::new();
        for c in data.chunks(chunk) {
            s.feed(&Bytes::copy_from_slice(c), &mut events)
                .expect("feed");
        }
        s.finish().expect("complete");
        let mut out: Vec<(EntryMeta, Vec<u8>)> = Vec::new();
        for e in events {
            match e {
                TarEvent::Entry(m) => out.push((m, Vec::new())),
                TarEvent::Data(d) => out.last_mut().expect("entry").1.extend_from_slice(&d),
                TarEvent::FileEnd => {}
            }
        }
        out
    }

    #[test]
    fn any_chunking_gives_the_same_entries() {
        let data = archive();
        let reference = split(&data, data.len());
        assert_eq!(reference.len(), 5);
        assert_eq!(reference[0].0.path, "global");
        assert_eq!(reference[0].0.kind, EntryKind::Dir);
        assert_eq!(reference[1].0.path, "global/pg_control");
        assert_eq!(reference[1].1.len(), 5000);
        assert_eq!(reference[1].0.mode, 0o600);
        assert_eq!(reference[1].0.mtime, 1_700_000_001);
        assert_eq!(reference[2].0.size, 0);
        assert_eq!(reference[3].0.link_target.as_deref(), Some("/srv/ts"));
        assert!(reference[4].0.path.ends_with(&"x".repeat(150)));
        assert_eq!(reference[4].1, b"abc");
        for chunk in [1, 7, 511, 512, 513, 4096] {
            assert_eq!(split(&data, chunk), reference, "chunk {chunk}");
        }
        // Without the two zero blocks (as PostgreSQL 15 sends it) it is complete too.
        let trimmed = &data[..data.len() - 1024];
        assert_eq!(split(trimmed, 100), reference);
    }

    #[test]
    fn truncation_and_garbage_are_errors() {
        let data = archive();
        let mut s = TarSplitter::new();
        let mut ev = Vec::new();
        s.feed(&Bytes::copy_from_slice(&data[..1200]), &mut ev)
            .expect("feed");
        assert!(s.finish().is_err());
        let mut bad = data.clone();
        bad[0] ^= 1;
        let mut s = TarSplitter::new();
        assert!(s.feed(&Bytes::from(bad), &mut ev).is_err());
        assert!(clean_path(b"../etc").is_err());
        assert!(clean_path(b"/etc").is_err());
        assert_eq!(clean_path(b"./a//b/").expect("ok"), "a/b");
    }
}
