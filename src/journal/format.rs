//! On-disk format of the journal: segment files of checksummed batches of frames, the
//! snapshot file and the applied marker. Pure functions over byte slices, so recovery
//! decisions (torn tail or real corruption) are unit-tested without touching a disk.
//!
//! ```text
//! segment  = header batch*
//! header   = "HWJSEG01" first_seq:u64              (16 bytes; first_seq is a lower bound)
//! batch    = "HWJB" body_len:u32 count:u32 first_seq:u64 crc:u32   (24 bytes) frame{count}
//! frame    = len:u32 crc:u32 seq:u64 payload[len]   (crc over len, seq, payload)
//! ```
//!
//! All integers are little endian. One batch is exactly what one group commit wrote
//! with one `write` + `fsync`; the batch header is what lets recovery tell a write cut
//! short by a crash (only the last batch of the newest segment can be one) from damage
//! to data that had been fsync'd (anything else).
//!
//! A segment file may be longer than its batches: the writer preallocates space ahead of
//! the write position (see `writer.rs`), which reads back as zeros. A run of zeros where
//! the next batch would start is the clean end of the segment; a batch never starts with
//! a zero byte (its marker is `HWJB`).

use super::Seq;

pub(super) const SEGMENT_MAGIC: [u8; 8] = *b"HWJSEG01";
pub(super) const SEGMENT_HEADER_LEN: usize = 16;
pub(super) const BATCH_MAGIC: [u8; 4] = *b"HWJB";
pub(super) const BATCH_HEADER_LEN: usize = 24;
pub(super) const FRAME_HEADER_LEN: usize = 16;
const SNAPSHOT_MAGIC: [u8; 8] = *b"HWJSNAP1";
const SNAPSHOT_HEADER_LEN: usize = 36;
const APPLIED_MAGIC: [u8; 8] = *b"HWJAPL01";
pub(super) const APPLIED_LEN: usize = 20;

/// Largest record the journal accepts. A delivery's effect is far smaller (bodies are
/// capped at `maxBodyBytes`); the bound keeps a batch's length within its `u32` field.
pub(super) const MAX_RECORD_BYTES: usize = 16 * 1024 * 1024;
/// A group commit stops collecting once its body reaches this size.
pub(super) const MAX_BATCH_BYTES: usize = 64 * 1024 * 1024;

pub(super) const SNAPSHOT_FILE: &str = "snapshot";
pub(super) const SNAPSHOT_TMP_FILE: &str = "snapshot.tmp";
pub(super) const APPLIED_FILE: &str = "applied";
pub(super) const APPLIED_TMP_FILE: &str = "applied.tmp";
pub(super) const LOCK_FILE: &str = "LOCK";

pub(super) fn segment_file_name(first_seq: Seq) -> String {
    format!("seg-{first_seq:020}.log")
}

/// The first seq encoded in a segment file name, `None` for any other file.
pub(super) fn parse_segment_name(name: &str) -> Option<Seq> {
    let digits = name.strip_prefix("seg-")?.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

pub(super) fn encode_segment_header(first_seq: Seq) -> [u8; SEGMENT_HEADER_LEN] {
    let mut out = [0u8; SEGMENT_HEADER_LEN];
    out[..8].copy_from_slice(&SEGMENT_MAGIC);
    out[8..].copy_from_slice(&first_seq.to_le_bytes());
    out
}

/// Bytes a record occupies inside a batch.
pub(super) fn frame_len(payload_len: usize) -> usize {
    FRAME_HEADER_LEN + payload_len
}

/// Builds one batch in `out` (cleared first). `begin` reserves the header, `push`
/// appends frames, `finish` fills the header in.
pub(super) struct BatchEncoder<'a> {
    out: &'a mut Vec<u8>,
    first_seq: Seq,
    count: u32,
}

impl<'a> BatchEncoder<'a> {
    pub(super) fn begin(out: &'a mut Vec<u8>, first_seq: Seq) -> Self {
        out.clear();
        out.resize(BATCH_HEADER_LEN, 0);
        Self {
            out,
            first_seq,
            count: 0,
        }
    }

    /// Appends the frame for `seq`, which must be `first_seq + frames so far`.
    pub(super) fn push(&mut self, seq: Seq, payload: &[u8]) {
        debug_assert_eq!(seq, self.first_seq + u64::from(self.count));
        // MAX_RECORD_BYTES keeps this in range; the writer checks before pushing.
        let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
        self.out.extend_from_slice(&len.to_le_bytes());
        self.out
            .extend_from_slice(&frame_crc(len, seq, payload).to_le_bytes());
        self.out.extend_from_slice(&seq.to_le_bytes());
        self.out.extend_from_slice(payload);
        self.count += 1;
    }

    pub(super) fn count(&self) -> u32 {
        self.count
    }

    pub(super) fn finish(self) {
        let body_len = u32::try_from(self.out.len() - BATCH_HEADER_LEN).unwrap_or(u32::MAX);
        let header = &mut self.out[..BATCH_HEADER_LEN];
        header[..4].copy_from_slice(&BATCH_MAGIC);
        header[4..8].copy_from_slice(&body_len.to_le_bytes());
        header[8..12].copy_from_slice(&self.count.to_le_bytes());
        header[12..20].copy_from_slice(&self.first_seq.to_le_bytes());
        let crc = crc32fast::hash(&header[..20]);
        header[20..24].copy_from_slice(&crc.to_le_bytes());
    }
}

fn frame_crc(len: u32, seq: Seq, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&len.to_le_bytes());
    hasher.update(&seq.to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

/// What a segment scan found.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Scan {
    /// The file is shorter than its header, or the header never made it to disk, and it
    /// is the newest segment: a crash while creating it. It holds no records.
    Unborn,
    /// Valid batches up to `valid_len`; `tail` describes a damaged last batch after it
    /// (newest segment only), which recovery cuts off.
    Valid {
        valid_len: u64,
        last_seq: Option<Seq>,
        tail: Option<Tail>,
    },
}

/// A damaged last batch of the newest segment with nothing intact after it.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Tail {
    pub damage: Damage,
    pub kind: TailKind,
}

/// Whether a damaged last batch is a write a crash cut short or acknowledged data that
/// was damaged afterwards. A crash can only leave a batch *incomplete*: shorter than
/// its header says, or with sectors that never reached the disk, which read as zeros
/// (the writer only ever writes batches over zeros it wrote ahead, or past the end of
/// the file, whose unwritten blocks read as zeros). A batch of its full length with no
/// zero-filled sector whose checksum fails is not that: it was written whole, fsync'd,
/// and its waiters were answered 2xx, before something changed its bytes (a bit flip
/// on the medium, a bad copy, a stray write).
#[derive(Debug, PartialEq, Eq)]
pub(super) enum TailKind {
    /// Short or zero-filled: never acknowledged.
    Torn,
    /// Complete and damaged: its deliveries were acknowledged and are lost. `first_seq`
    /// and `records` are what its header claims, `None` when the header itself is
    /// damaged.
    Corrupt {
        first_seq: Option<Seq>,
        records: Option<u32>,
    },
}

/// Granularity at which a crash can leave parts of a write unwritten (the smallest
/// device sector; file system blocks and pages are multiples of it, aligned alike).
pub(super) const SECTOR: usize = 512;

/// Whether `bytes[start..end]` shows parts of a write that never reached the disk: some
/// sector's share of it (sectors aligned to file offsets) is all zeros, or it ends in
/// at least `trailing` zero bytes (a write cut short inside a sector: the rest of the
/// sector kept the zeros under it). A record's payload is the caller's JSON, which
/// never ends in a zero byte, so a whole batch ends in one only when its end was not
/// written; a batch header ends in its CRC, four zero bytes by chance once in 2^32.
fn unwritten_parts(bytes: &[u8], start: usize, end: usize, trailing: usize) -> bool {
    let end = end.min(bytes.len());
    if end - start >= trailing && all_zero(&bytes[end - trailing..end]) {
        return true;
    }
    let mut at = start;
    while at < end {
        let next = ((at / SECTOR) + 1) * SECTOR;
        let slice = &bytes[at..next.min(end)];
        if all_zero(slice) {
            return true;
        }
        at = next;
    }
    false
}

/// Where and why bytes could not be read back.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Damage {
    pub offset: u64,
    pub reason: String,
}

enum BatchError {
    /// The batch header itself is unreadable: the batch's extent is unknown.
    Header(Damage),
    /// The header is valid, so the batch ends at `end`, but its body is damaged.
    Body { damage: Damage, end: usize },
}

/// Reads a whole segment. `on_entry` sees every valid record in order. `is_last` says
/// whether this is the newest segment, the only place a crash can leave a partial write.
pub(super) fn scan_segment(
    bytes: &[u8],
    name_first_seq: Seq,
    is_last: bool,
    mut on_entry: impl FnMut(Seq, &[u8]),
) -> Result<Scan, Damage> {
    let header_ok = bytes.len() >= SEGMENT_HEADER_LEN
        && bytes[..8] == SEGMENT_MAGIC
        && read_u64(bytes, 8) == name_first_seq;
    if !header_ok {
        // Short, or nothing but zeros: the header was never made durable, so no record
        // can have been acknowledged from this file.
        if is_last && (bytes.len() <= SEGMENT_HEADER_LEN || all_zero(bytes)) {
            return Ok(Scan::Unborn);
        }
        return Err(Damage {
            offset: 0,
            reason: "invalid segment header".into(),
        });
    }
    let mut pos = SEGMENT_HEADER_LEN;
    let mut last_seq: Option<Seq> = None;
    while pos < bytes.len() {
        if all_zero(&bytes[pos..]) {
            // Preallocated space that was never written: the clean end.
            break;
        }
        let min_seq = last_seq.map_or(name_first_seq, |s| s + 1);
        let exact = last_seq.is_some();
        match parse_batch(bytes, pos, min_seq, exact) {
            Ok((end, first, count)) => {
                for (seq, payload) in frames(bytes, pos, first, count) {
                    on_entry(seq, payload);
                }
                if count > 0 {
                    last_seq = Some(first + u64::from(count) - 1);
                }
                pos = end;
            }
            Err(error) => {
                // Only the last batch of the newest segment can be the one being written
                // when the process died: damage followed by an intact batch with later
                // entries, or in an older segment, is in data that had been fsync'd.
                let last_batch = match &error {
                    BatchError::Body { end, .. } => {
                        *end >= bytes.len() || !later_batch_exists(bytes, pos + 1, min_seq)
                    }
                    BatchError::Header(_) => !later_batch_exists(bytes, pos + 1, min_seq),
                };
                if !(is_last && last_batch) {
                    return Err(match error {
                        BatchError::Body { damage, .. } | BatchError::Header(damage) => damage,
                    });
                }
                return Ok(Scan::Valid {
                    valid_len: pos as u64,
                    last_seq,
                    tail: Some(classify_tail(bytes, pos, error)),
                });
            }
        }
    }
    Ok(Scan::Valid {
        valid_len: pos as u64,
        last_seq,
        tail: None,
    })
}

/// Torn or corrupt (see [`TailKind`]) for the damaged last batch at `pos`.
fn classify_tail(bytes: &[u8], pos: usize, error: BatchError) -> Tail {
    match error {
        BatchError::Body { damage, end } => {
            let torn = end > bytes.len() || unwritten_parts(bytes, pos, end, 1);
            let header = &bytes[pos..pos + BATCH_HEADER_LEN];
            Tail {
                damage,
                kind: if torn {
                    TailKind::Torn
                } else {
                    TailKind::Corrupt {
                        first_seq: Some(read_u64(header, 12)),
                        records: Some(read_u32(header, 8)),
                    }
                },
            }
        }
        // The extent is unknown; judge the header's own bytes. Cut short or partly
        // zeros: never written whole.
        BatchError::Header(damage) => {
            let header_end = pos + BATCH_HEADER_LEN;
            let torn = header_end > bytes.len() || unwritten_parts(bytes, pos, header_end, 4);
            Tail {
                damage,
                kind: if torn {
                    TailKind::Torn
                } else {
                    TailKind::Corrupt {
                        first_seq: None,
                        records: None,
                    }
                },
            }
        }
    }
}

fn all_zero(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b == 0)
}

/// Hands `visit` the records of one segment whose seq lies in `from..=to`, in order, by
/// positioned reads: a batch wholly before `from` costs one header read, its body is
/// skipped. For reading back entries of a live journal (deferred forwards): every entry
/// up to `to` was committed before the caller asked, so reaching the end of the written
/// batches (zeros, or a batch still being written) before `to` is simply the end of this
/// segment. A batch that is complete but fails its checks is `InvalidData`. Returns
/// whether the scan went past `to` or `visit` asked to stop (later segments need not
/// be read).
pub(super) fn read_range(
    file: &std::fs::File,
    name_first_seq: Seq,
    from: Seq,
    to: Seq,
    visit: &mut dyn FnMut(Seq, &[u8]) -> bool,
) -> std::io::Result<bool> {
    use std::os::unix::fs::FileExt as _;
    let invalid = |reason: String| std::io::Error::new(std::io::ErrorKind::InvalidData, reason);
    let len = file.metadata()?.len();
    let mut header = [0u8; SEGMENT_HEADER_LEN];
    if len < SEGMENT_HEADER_LEN as u64 {
        return Ok(false);
    }
    file.read_exact_at(&mut header, 0)?;
    if header[..8] != SEGMENT_MAGIC || read_u64(&header, 8) != name_first_seq {
        return Err(invalid("invalid segment header".into()));
    }
    let mut pos = SEGMENT_HEADER_LEN as u64;
    let mut header_bytes = [0u8; BATCH_HEADER_LEN];
    let mut buf = Vec::new();
    while pos + BATCH_HEADER_LEN as u64 <= len {
        file.read_exact_at(&mut header_bytes, pos)?;
        // Zeros written ahead, or the batch the writer is writing now.
        let Ok(BatchHeader {
            body_len,
            count,
            first,
        }) = batch_header(&header_bytes)
        else {
            return Ok(false);
        };
        let end = pos + BATCH_HEADER_LEN as u64 + u64::from(body_len);
        if first > to {
            return Ok(true);
        }
        if end > len {
            return Ok(false);
        }
        if count == 0 || first + u64::from(count) - 1 < from {
            pos = end;
            continue;
        }
        buf.resize(
            usize::try_from(end - pos).map_err(std::io::Error::other)?,
            0,
        );
        file.read_exact_at(&mut buf, pos)?;
        parse_batch(&buf, 0, first, true).map_err(|e| match e {
            BatchError::Header(d) | BatchError::Body { damage: d, .. } => invalid(format!(
                "journal batch at offset {}: {}",
                pos + d.offset,
                d.reason
            )),
        })?;
        for (seq, payload) in frames(&buf, 0, first, count) {
            if seq > to {
                return Ok(true);
            }
            if seq >= from && !visit(seq, payload) {
                return Ok(true);
            }
        }
        pos = end;
    }
    Ok(false)
}

/// What a batch header says, once its marker and checksum hold.
struct BatchHeader {
    body_len: u32,
    count: u32,
    first: Seq,
}

/// Decodes a batch header (`BATCH_HEADER_LEN` bytes); the error says what is wrong.
fn batch_header(header: &[u8]) -> Result<BatchHeader, &'static str> {
    if header[..4] != BATCH_MAGIC {
        return Err("missing batch marker");
    }
    if crc32fast::hash(&header[..20]) != read_u32(header, 20) {
        return Err("batch header checksum mismatch");
    }
    Ok(BatchHeader {
        body_len: read_u32(header, 4),
        count: read_u32(header, 8),
        first: read_u64(header, 12),
    })
}

/// The records of the batch at `pos` (already validated by [`parse_batch`]), with their
/// seqs.
fn frames(bytes: &[u8], pos: usize, first: Seq, count: u32) -> impl Iterator<Item = (Seq, &[u8])> {
    let mut at = pos + BATCH_HEADER_LEN;
    (0..u64::from(count)).map(move |i| {
        let len = read_u32(bytes, at) as usize;
        let payload = &bytes[at + FRAME_HEADER_LEN..at + FRAME_HEADER_LEN + len];
        at += FRAME_HEADER_LEN + len;
        (first + i, payload)
    })
}

/// Validates the batch at `pos`: returns (end offset, first seq, count).
/// With `exact`, its first seq must equal `min_seq`, else be at least `min_seq`.
fn parse_batch(
    bytes: &[u8],
    pos: usize,
    min_seq: Seq,
    exact: bool,
) -> Result<(usize, Seq, u32), BatchError> {
    let header_damage = |reason: &str| {
        BatchError::Header(Damage {
            offset: pos as u64,
            reason: reason.to_string(),
        })
    };
    if bytes.len() - pos < BATCH_HEADER_LEN {
        return Err(header_damage("truncated batch header"));
    }
    let BatchHeader {
        body_len,
        count,
        first,
    } = batch_header(&bytes[pos..pos + BATCH_HEADER_LEN]).map_err(header_damage)?;
    let body_len = body_len as usize;
    let end = pos + BATCH_HEADER_LEN + body_len;
    let body_damage = |offset: usize, reason: String| BatchError::Body {
        damage: Damage {
            offset: offset as u64,
            reason,
        },
        end,
    };
    if (exact && first != min_seq) || first < min_seq {
        return Err(body_damage(
            pos,
            format!(
                "batch starts at seq {first}, expected {}{min_seq}",
                if exact { "" } else { ">= " }
            ),
        ));
    }
    if end > bytes.len() {
        return Err(body_damage(
            pos,
            format!("batch of {body_len} bytes runs past the end of the file"),
        ));
    }
    let mut at = pos + BATCH_HEADER_LEN;
    for i in 0..u64::from(count) {
        if end - at < FRAME_HEADER_LEN {
            return Err(body_damage(at, "truncated record header".into()));
        }
        let len = read_u32(bytes, at);
        let crc = read_u32(bytes, at + 4);
        let seq = read_u64(bytes, at + 8);
        let payload_start = at + FRAME_HEADER_LEN;
        if end - payload_start < len as usize {
            return Err(body_damage(
                at,
                format!("record of {len} bytes runs past its batch"),
            ));
        }
        let payload = &bytes[payload_start..payload_start + len as usize];
        if frame_crc(len, seq, payload) != crc {
            return Err(body_damage(at, "record checksum mismatch".into()));
        }
        if seq != first + i {
            return Err(body_damage(
                at,
                format!("record has seq {seq}, expected {}", first + i),
            ));
        }
        at = payload_start + len as usize;
    }
    if at != end {
        return Err(body_damage(
            at,
            "batch length does not match its records".into(),
        ));
    }
    Ok((end, first, count))
}

/// Whether a complete, checksummed batch starts anywhere at or after `from`.
fn later_batch_exists(bytes: &[u8], from: usize, min_seq: Seq) -> bool {
    let mut pos = from;
    while pos + BATCH_HEADER_LEN <= bytes.len() {
        let Some(hit) = bytes[pos..]
            .windows(BATCH_MAGIC.len())
            .position(|w| w == BATCH_MAGIC)
        else {
            return false;
        };
        let candidate = pos + hit;
        if parse_batch(bytes, candidate, min_seq, false).is_ok() {
            return true;
        }
        pos = candidate + 1;
    }
    false
}

/// The snapshot file's content.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct SnapshotFile {
    pub covers_seq: Seq,
    pub applied_seq: Seq,
    pub payload: Vec<u8>,
}

pub(super) fn encode_snapshot(covers_seq: Seq, applied_seq: Seq, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(SNAPSHOT_HEADER_LEN + payload.len());
    out.extend_from_slice(&SNAPSHOT_MAGIC);
    out.extend_from_slice(&covers_seq.to_le_bytes());
    out.extend_from_slice(&applied_seq.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&out);
    hasher.update(payload);
    out.extend_from_slice(&hasher.finalize().to_le_bytes());
    out.extend_from_slice(payload);
    out
}

pub(super) fn decode_snapshot(bytes: &[u8]) -> Result<SnapshotFile, Damage> {
    let damage = |offset: usize, reason: &str| Damage {
        offset: offset as u64,
        reason: reason.into(),
    };
    if bytes.len() < SNAPSHOT_HEADER_LEN || bytes[..8] != SNAPSHOT_MAGIC {
        return Err(damage(0, "invalid snapshot header"));
    }
    let covers_seq = read_u64(bytes, 8);
    let applied_seq = read_u64(bytes, 16);
    let len = read_u64(bytes, 24);
    let payload = &bytes[SNAPSHOT_HEADER_LEN..];
    if payload.len() as u64 != len {
        return Err(damage(24, "snapshot length does not match the file"));
    }
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&bytes[..32]);
    hasher.update(payload);
    if hasher.finalize() != read_u32(bytes, 32) {
        return Err(damage(32, "snapshot checksum mismatch"));
    }
    Ok(SnapshotFile {
        covers_seq,
        applied_seq,
        payload: payload.to_vec(),
    })
}

pub(super) fn encode_applied(seq: Seq) -> [u8; APPLIED_LEN] {
    let mut out = [0u8; APPLIED_LEN];
    out[..8].copy_from_slice(&APPLIED_MAGIC);
    out[8..16].copy_from_slice(&seq.to_le_bytes());
    let crc = crc32fast::hash(&out[..16]);
    out[16..].copy_from_slice(&crc.to_le_bytes());
    out
}

/// `None` when the marker is damaged: it is written without fsync, and a stale or lost
/// marker only means more replay, never less.
pub(super) fn decode_applied(bytes: &[u8]) -> Option<Seq> {
    if bytes.len() != APPLIED_LEN || bytes[..8] != APPLIED_MAGIC {
        return None;
    }
    (crc32fast::hash(&bytes[..16]) == read_u32(bytes, 16)).then(|| read_u64(bytes, 8))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(first_seq: Seq, records: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut enc = BatchEncoder::begin(&mut out, first_seq);
        for (i, r) in records.iter().enumerate() {
            enc.push(first_seq + i as u64, r);
        }
        enc.finish();
        out
    }

    fn segment(first_seq: Seq, batches: &[Vec<u8>]) -> Vec<u8> {
        let mut out = encode_segment_header(first_seq).to_vec();
        for b in batches {
            out.extend_from_slice(b);
        }
        out
    }

    type Entries = Vec<(Seq, Vec<u8>)>;

    fn scan(bytes: &[u8], first: Seq, is_last: bool) -> (Result<Scan, Damage>, Entries) {
        let mut seen = Vec::new();
        let result = scan_segment(bytes, first, is_last, |s, p| seen.push((s, p.to_vec())));
        (result, seen)
    }

    #[test]
    fn segment_names_roundtrip_and_reject_strangers() {
        assert_eq!(parse_segment_name(&segment_file_name(42)), Some(42));
        assert_eq!(parse_segment_name("seg-42.log"), None);
        assert_eq!(parse_segment_name("snapshot"), None);
        assert_eq!(
            parse_segment_name("seg-00000000000000000001.log.corrupt"),
            None
        );
    }

    #[test]
    fn clean_segment_yields_every_record_in_order() {
        let bytes = segment(5, &[batch(5, &[b"a", b"bb"]), batch(7, &[b"", b"dddd"])]);
        let (result, seen) = scan(&bytes, 5, false);
        assert_eq!(
            result,
            Ok(Scan::Valid {
                valid_len: bytes.len() as u64,
                last_seq: Some(8),
                tail: None
            })
        );
        let want: Vec<(Seq, Vec<u8>)> = vec![
            (5, b"a".to_vec()),
            (6, b"bb".to_vec()),
            (7, vec![]),
            (8, b"dddd".to_vec()),
        ];
        assert_eq!(seen, want);
    }

    #[test]
    fn half_written_last_batch_is_a_torn_tail() {
        let good = segment(1, &[batch(1, &[b"kept"])]);
        let next = batch(2, &[b"lost-1", b"lost-2"]);
        for cut in [
            1,
            BATCH_HEADER_LEN - 1,
            BATCH_HEADER_LEN + 3,
            next.len() - 1,
        ] {
            let mut bytes = good.clone();
            bytes.extend_from_slice(&next[..cut]);
            let (result, seen) = scan(&bytes, 1, true);
            match result {
                Ok(Scan::Valid {
                    valid_len,
                    last_seq: Some(1),
                    tail:
                        Some(Tail {
                            kind: TailKind::Torn,
                            ..
                        }),
                }) => {
                    assert_eq!(valid_len, good.len() as u64, "cut at {cut}");
                }
                other => panic!("cut at {cut}: {other:?}"),
            }
            assert_eq!(seen, vec![(1, b"kept".to_vec())]);
        }
    }

    fn is_torn(result: &Result<Scan, Damage>) -> bool {
        matches!(
            result,
            Ok(Scan::Valid {
                tail: Some(Tail {
                    kind: TailKind::Torn,
                    ..
                }),
                last_seq: Some(1),
                ..
            })
        )
    }

    /// A kept batch, then a last batch of three sectors' worth of records.
    fn with_long_last_batch() -> (Vec<u8>, usize) {
        let good = segment(1, &[batch(1, &[b"kept"])]);
        let payload = b"x".repeat(700);
        let last = batch(2, &[payload.as_slice(), payload.as_slice(), b"tail"]);
        let mut bytes = good.clone();
        bytes.extend_from_slice(&last);
        (bytes, good.len())
    }

    #[test]
    fn zeroed_sectors_inside_the_last_batch_are_a_torn_tail() {
        // A crash can persist a batch's later sectors but not its earlier ones (and the
        // reverse); a sector that never reached the disk reads as the zeros under it.
        let (clean, at) = with_long_last_batch();
        for sector in 1..=(clean.len() - 1) / SECTOR {
            let mut bytes = clean.clone();
            let end = ((sector + 1) * SECTOR).min(bytes.len());
            bytes[sector * SECTOR..end].fill(0);
            assert!(is_torn(&scan(&bytes, 1, true).0), "sector {sector} zeroed");
        }
        // The batch's share of the first sector (its header) never written.
        let mut bytes = clean.clone();
        bytes[at..SECTOR].fill(0);
        assert!(is_torn(&scan(&bytes, 1, true).0), "header zeroed");
        // Only the header's part of that sector.
        let mut bytes = clean.clone();
        bytes[at..at + BATCH_HEADER_LEN].fill(0);
        assert!(is_torn(&scan(&bytes, 1, true).0), "header zeroed");
    }

    /// Issue 18, finding 12: a complete last batch whose checksum fails had been
    /// fsync'd and acknowledged; it must not pass for a torn write.
    #[test]
    fn a_complete_last_batch_with_a_bad_checksum_is_corruption_not_a_torn_tail() {
        let (clean, at) = with_long_last_batch();
        let payload_at = at + BATCH_HEADER_LEN + FRAME_HEADER_LEN;
        for flip in [payload_at, payload_at + 600, clean.len() - 1, at + 30] {
            let mut bytes = clean.clone();
            bytes[flip] ^= 0x04;
            match scan(&bytes, 1, true).0 {
                Ok(Scan::Valid {
                    valid_len,
                    last_seq: Some(1),
                    tail:
                        Some(Tail {
                            kind:
                                TailKind::Corrupt {
                                    first_seq: Some(2),
                                    records: Some(3),
                                },
                            ..
                        }),
                }) => assert_eq!(valid_len, at as u64),
                other => panic!("flip at {flip}: {other:?}"),
            }
        }
        // A flipped header: its claims cannot be trusted, it is still corruption.
        for flip in [at + 1, at + 5, at + 21] {
            let mut bytes = clean.clone();
            bytes[flip] ^= 0x10;
            match scan(&bytes, 1, true).0 {
                Ok(Scan::Valid {
                    valid_len,
                    tail:
                        Some(Tail {
                            kind:
                                TailKind::Corrupt {
                                    first_seq: None,
                                    records: None,
                                },
                            ..
                        }),
                    ..
                }) => assert_eq!(valid_len, at as u64),
                other => panic!("header flip at {flip}: {other:?}"),
            }
        }
        // Followed by preallocated zeros: the same.
        let mut bytes = preallocated(clean.clone(), 4096);
        bytes[payload_at] ^= 0x04;
        assert!(matches!(
            scan(&bytes, 1, true).0,
            Ok(Scan::Valid {
                tail: Some(Tail {
                    kind: TailKind::Corrupt { .. },
                    ..
                }),
                ..
            })
        ));
        // Cut short instead: torn.
        assert!(is_torn(&scan(&clean[..clean.len() - 1], 1, true).0));
    }

    #[test]
    fn damage_followed_by_an_intact_batch_is_corruption_with_its_offset() {
        let first = batch(1, &[b"one"]);
        let mut bytes = segment(
            1,
            &[first.clone(), batch(2, &[b"two"]), batch(3, &[b"three"])],
        );
        let second_at = SEGMENT_HEADER_LEN + first.len();
        // Flip a payload byte in the middle batch.
        let flip = second_at + BATCH_HEADER_LEN + FRAME_HEADER_LEN;
        bytes[flip] ^= 0xff;
        let (result, _) = scan(&bytes, 1, true);
        assert_eq!(
            result,
            Err(Damage {
                offset: (second_at + BATCH_HEADER_LEN) as u64,
                reason: "record checksum mismatch".into()
            })
        );
        // Its header destroyed instead: the intact batch after it still proves corruption.
        bytes[flip] ^= 0xff;
        bytes[second_at + 2] ^= 0xff;
        let (result, _) = scan(&bytes, 1, true);
        assert_eq!(result.map_err(|d| d.offset), Err(second_at as u64));
    }

    #[test]
    fn any_damage_in_an_older_segment_is_corruption() {
        let mut bytes = segment(1, &[batch(1, &[b"one"])]);
        bytes.truncate(bytes.len() - 1);
        assert!(scan(&bytes, 1, false).0.is_err());
        assert!(scan(&bytes, 1, true).0.is_ok());
    }

    #[test]
    fn header_only_or_missing_header_of_newest_segment_is_unborn() {
        assert_eq!(scan(&[], 9, true).0, Ok(Scan::Unborn));
        assert_eq!(scan(&SEGMENT_MAGIC[..5], 9, true).0, Ok(Scan::Unborn));
        let header = encode_segment_header(9);
        assert_eq!(
            scan(&header, 9, true).0,
            Ok(Scan::Valid {
                valid_len: 16,
                last_seq: None,
                tail: None
            })
        );
        // Nothing but a header that is wrong: a crash mid-creation, no records lost.
        assert_eq!(scan(&header, 8, true).0, Ok(Scan::Unborn));
        let with_record = segment(9, &[batch(9, &[b"r"])]);
        assert!(
            scan(&with_record, 8, true).0.is_err(),
            "name and header disagree"
        );
        assert!(
            scan(&header, 8, false).0.is_err(),
            "older segments must be whole"
        );
    }

    /// Space the writer preallocated and never wrote reads back as zeros.
    fn preallocated(mut bytes: Vec<u8>, zeros: usize) -> Vec<u8> {
        bytes.resize(bytes.len() + zeros, 0);
        bytes
    }

    #[test]
    fn preallocated_zero_tail_is_the_clean_end_of_any_segment() {
        let batches = segment(1, &[batch(1, &[b"one"]), batch(2, &[b"two", b"three"])]);
        let bytes = preallocated(batches.clone(), 4096);
        for is_last in [true, false] {
            let (result, seen) = scan(&bytes, 1, is_last);
            assert_eq!(
                result,
                Ok(Scan::Valid {
                    valid_len: batches.len() as u64,
                    last_seq: Some(3),
                    tail: None
                }),
                "is_last {is_last}"
            );
            assert_eq!(seen.len(), 3);
        }
        // A header and nothing written after it yet.
        let empty = preallocated(encode_segment_header(7).to_vec(), 4096);
        assert_eq!(
            scan(&empty, 7, false).0,
            Ok(Scan::Valid {
                valid_len: SEGMENT_HEADER_LEN as u64,
                last_seq: None,
                tail: None
            })
        );
    }

    #[test]
    fn batch_cut_short_in_preallocated_space_is_a_torn_tail_only_when_newest() {
        let good = segment(1, &[batch(1, &[b"kept"])]);
        let next = batch(2, &[b"lost-1", b"lost-2"]);
        for cut in [1, BATCH_HEADER_LEN + 3, next.len() - 1] {
            let mut bytes = good.clone();
            bytes.extend_from_slice(&next[..cut]);
            let bytes = preallocated(bytes, 4096);
            let (result, seen) = scan(&bytes, 1, true);
            match result {
                Ok(Scan::Valid {
                    valid_len,
                    last_seq: Some(1),
                    tail:
                        Some(Tail {
                            kind: TailKind::Torn,
                            ..
                        }),
                }) => assert_eq!(valid_len, good.len() as u64, "cut at {cut}"),
                other => panic!("cut at {cut}: {other:?}"),
            }
            assert_eq!(seen, vec![(1, b"kept".to_vec())]);
            assert!(scan(&bytes, 1, false).0.is_err(), "cut at {cut}, older");
        }
        // Header persisted, body still zeros (its blocks never reached the disk).
        let mut bytes = good.clone();
        bytes.extend_from_slice(&next[..BATCH_HEADER_LEN]);
        let bytes = preallocated(bytes, next.len() + 4096);
        assert!(is_torn(&scan(&bytes, 1, true).0));
    }

    #[test]
    fn damage_before_an_intact_batch_stays_corruption_with_a_zero_tail() {
        let first = batch(1, &[b"one"]);
        let mut bytes = segment(1, &[first.clone(), batch(2, &[b"two"])]);
        bytes[SEGMENT_HEADER_LEN + BATCH_HEADER_LEN + FRAME_HEADER_LEN] ^= 0xff;
        let bytes = preallocated(bytes, 4096);
        assert_eq!(
            scan(&bytes, 1, true).0.map_err(|d| d.offset),
            Err((SEGMENT_HEADER_LEN + BATCH_HEADER_LEN) as u64)
        );
    }

    #[test]
    fn all_zero_newest_segment_is_unborn() {
        let zeros = vec![0u8; 4096];
        assert_eq!(scan(&zeros, 5, true).0, Ok(Scan::Unborn));
        assert!(
            scan(&zeros, 5, false).0.is_err(),
            "older segments must be whole"
        );
    }

    #[test]
    fn sequence_gap_inside_a_segment_is_corruption() {
        let bytes = segment(
            1,
            &[
                batch(1, &[b"one"]),
                batch(3, &[b"three"]),
                batch(4, &[b"4"]),
            ],
        );
        let (result, _) = scan(&bytes, 1, true);
        assert!(result.is_err());
    }

    #[test]
    fn snapshot_and_applied_roundtrip_and_detect_damage() {
        let bytes = encode_snapshot(10, 7, b"state");
        assert_eq!(
            decode_snapshot(&bytes),
            Ok(SnapshotFile {
                covers_seq: 10,
                applied_seq: 7,
                payload: b"state".to_vec()
            })
        );
        let mut bad = bytes.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(decode_snapshot(&bad).is_err());
        assert!(decode_snapshot(&bytes[..bytes.len() - 1]).is_err());
        assert_eq!(decode_applied(&encode_applied(99)), Some(99));
        let mut bad = encode_applied(99);
        bad[9] ^= 1;
        assert_eq!(decode_applied(&bad), None);
        assert_eq!(decode_applied(b""), None);
    }
}
