//! H.264 SEI "user data unregistered" messages (ITU-T H.264 §D.1.7): a 16-byte UUID followed
//! by free bytes, carried inside the video bitstream so that every hop forwards it untouched.
//!
//! Cascade's load tester stamps each frame's capture time this way. Writing applies emulation
//! prevention (§7.4.1) so the payload can hold any bytes; reading removes it.

use crate::h264::{NAL_SEI, nal_type, nal_units};

/// SEI payload type of user data unregistered.
const USER_DATA_UNREGISTERED: u8 = 5;

/// An SEI NAL unit (without start code) carrying `data` under `uuid`.
pub fn user_data_nal(uuid: &[u8; 16], data: &[u8]) -> Vec<u8> {
    let mut rbsp = vec![USER_DATA_UNREGISTERED];
    let mut size = uuid.len() + data.len();
    while size >= 255 {
        rbsp.push(255);
        size -= 255;
    }
    rbsp.push(size as u8);
    rbsp.extend_from_slice(uuid);
    rbsp.extend_from_slice(data);
    rbsp.push(0x80); // rbsp_stop_one_bit and alignment
    let mut nal = vec![NAL_SEI]; // nal_ref_idc 0
    nal.extend(add_emulation_prevention(&rbsp));
    nal
}

/// The data of the first user-data-unregistered SEI message with `uuid` in an Annex B access
/// unit, if there is one.
pub fn find_user_data(annex_b: &[u8], uuid: &[u8; 16]) -> Option<Vec<u8>> {
    nal_units(annex_b)
        .filter(|nal| nal_type(nal) == Some(NAL_SEI))
        .find_map(|nal| user_data_in_sei(&remove_emulation_prevention(&nal[1..]), uuid))
}

/// Walks the SEI messages of one SEI RBSP.
fn user_data_in_sei(mut rbsp: &[u8], uuid: &[u8; 16]) -> Option<Vec<u8>> {
    while rbsp.len() > 1 {
        let (kind, rest) = read_ff_coded(rbsp)?;
        let (size, rest) = read_ff_coded(rest)?;
        let body = rest.get(..size)?;
        if kind == usize::from(USER_DATA_UNREGISTERED) && body.len() >= 16 && body[..16] == uuid[..]
        {
            return Some(body[16..].to_vec());
        }
        rbsp = &rest[size..];
    }
    None
}

/// Reads an SEI payload type or size: a run of 0xFF bytes plus a final byte, summed.
fn read_ff_coded(bytes: &[u8]) -> Option<(usize, &[u8])> {
    let mut value = 0usize;
    for (i, &b) in bytes.iter().enumerate() {
        value += usize::from(b);
        if b != 0xff {
            return Some((value, &bytes[i + 1..]));
        }
    }
    None
}

/// Inserts 0x03 after every `00 00` that precedes a byte ≤ 3.
fn add_emulation_prevention(rbsp: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(rbsp.len() + rbsp.len() / 64);
    let mut zeros = 0;
    for &b in rbsp {
        if zeros >= 2 && b <= 3 {
            out.push(3);
            zeros = 0;
        }
        out.push(b);
        zeros = if b == 0 { zeros + 1 } else { 0 };
    }
    out
}

/// Drops the 0x03 of every `00 00 03`.
fn remove_emulation_prevention(ebsp: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ebsp.len());
    let mut zeros = 0;
    for &b in ebsp {
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        out.push(b);
        zeros = if b == 0 { zeros + 1 } else { 0 };
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const UUID: [u8; 16] = *b"cascade-test-id!";

    fn annex_b(nals: &[&[u8]]) -> Vec<u8> {
        nals.iter()
            .flat_map(|n| [&[0, 0, 0, 1][..], n].concat())
            .collect()
    }

    #[test]
    fn user_data_survives_a_round_trip_even_when_it_looks_like_a_start_code() {
        let data = [0, 0, 1, 0, 0, 0, 0, 3, 0, 0, 2, 0xff, 0, 0];
        let nal = user_data_nal(&UUID, &data);
        assert!(!nal.windows(3).any(|w| w == [0, 0, 1] || w == [0, 0, 0]));
        let au = annex_b(&[&nal, &[0x65, 0x88, 0x80]]);
        assert_eq!(find_user_data(&au, &UUID), Some(data.to_vec()));
    }

    #[test]
    fn other_uuids_and_other_nals_are_ignored() {
        let nal = user_data_nal(b"someone-else-id!", &[1, 2, 3]);
        let au = annex_b(&[&nal, &[0x65, 0x88]]);
        assert_eq!(find_user_data(&au, &UUID), None);
        assert_eq!(find_user_data(&annex_b(&[&[0x06, 0xff]]), &UUID), None);
        assert_eq!(find_user_data(&[], &UUID), None);
    }

    #[test]
    fn long_payloads_use_ff_coded_sizes() {
        let data = vec![7u8; 600];
        let au = annex_b(&[&user_data_nal(&UUID, &data)]);
        assert_eq!(find_user_data(&au, &UUID), Some(data));
    }
}
