//! The journal's on-disk decoders: segment scan (batches, frames, torn tail versus
//! corruption), snapshot and applied marker, over arbitrary bytes; and the round trip of
//! arbitrary records through the writer's layout.
#![no_main]

use arbitrary::Arbitrary;
use hookwarden::journal::fuzzing;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Input {
    /// Raw bytes read as a segment file.
    Raw {
        bytes: Vec<u8>,
        first_seq: u32,
        is_last: bool,
    },
    /// Well-formed batches, then damage: bytes flipped or cut.
    Damaged {
        first_seq: u32,
        batches: Vec<Vec<Vec<u8>>>,
        flips: Vec<(u16, u8)>,
        cut: Option<u16>,
        is_last: bool,
    },
    Snapshot(Vec<u8>),
    Applied(Vec<u8>),
}

fn check_scan(bytes: &[u8], first_seq: u64, is_last: bool) {
    let (seen, result) = fuzzing::scan_segment(bytes, first_seq, is_last);
    for pair in seen.windows(2) {
        assert_eq!(pair[1].0, pair[0].0 + 1, "seqs are consecutive");
    }
    if let Some((seq, _)) = seen.first() {
        assert!(*seq >= first_seq);
    }
    match result {
        Ok(Some(valid_len)) => assert!(valid_len as usize <= bytes.len()),
        Ok(None) => assert!(seen.is_empty() && is_last),
        Err(offset) => assert!(offset as usize <= bytes.len()),
    }
}

fuzz_target!(|input: Input| match input {
    Input::Raw {
        bytes,
        first_seq,
        is_last,
    } => check_scan(&bytes, u64::from(first_seq), is_last),
    Input::Damaged {
        first_seq,
        batches,
        flips,
        cut,
        is_last,
    } => {
        let first_seq = u64::from(first_seq) + 1;
        let batches: Vec<Vec<Vec<u8>>> = batches.into_iter().filter(|b| !b.is_empty()).collect();
        let clean = fuzzing::encode_segment(first_seq, &batches);
        // Intact: every record comes back, in order, and the whole file is valid.
        let (seen, result) = fuzzing::scan_segment(&clean, first_seq, is_last);
        let want: Vec<Vec<u8>> = batches.iter().flatten().cloned().collect();
        assert_eq!(
            seen.iter().map(|(_, r)| r.clone()).collect::<Vec<_>>(),
            want
        );
        assert_eq!(result, Ok(Some(clean.len() as u64)));
        let mut bytes = clean;
        for (at, mask) in flips {
            if !bytes.is_empty() {
                let i = usize::from(at) % bytes.len();
                bytes[i] ^= mask;
            }
        }
        if let Some(cut) = cut {
            let keep = usize::from(cut).min(bytes.len());
            bytes.truncate(keep);
        }
        check_scan(&bytes, first_seq, is_last);
    }
    Input::Snapshot(bytes) => {
        if let Some((covers, applied, payload)) = fuzzing::decode_snapshot(&bytes) {
            assert_eq!(fuzzing::encode_snapshot(covers, applied, &payload), bytes);
        }
    }
    Input::Applied(bytes) => {
        let _ = fuzzing::decode_applied(&bytes);
    }
});
