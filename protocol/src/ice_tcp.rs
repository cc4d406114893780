//! ICE over TCP (RFC 6544): datagrams on a byte stream, framed as RFC 4571 says.
//!
//! Each STUN, DTLS, RTP or RTCP datagram travels as a 16-bit big-endian length followed by
//! that many bytes. [`frame_into`] appends one datagram to an outgoing buffer;
//! [`next_frame`] takes the next whole datagram out of what has been read so far, leaving a
//! partial one in place until the rest arrives.

use bytes::{Buf, Bytes, BytesMut};

/// The largest datagram a 16-bit length can carry.
pub const MAX_FRAME: usize = u16::MAX as usize;

/// Appends `datagram` to `out` with its length prefix. A datagram too long for the prefix is
/// not appended (`false`): it could never have been one UDP datagram of ICE either.
pub fn frame_into(out: &mut Vec<u8>, datagram: &[u8]) -> bool {
    let Ok(len) = u16::try_from(datagram.len()) else {
        return false;
    };
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(datagram);
    true
}

/// Takes the next whole datagram from the front of `read`, or `None` while it is incomplete.
/// Empty frames (a length of zero, which RFC 4571 allows) are skipped.
pub fn next_frame(read: &mut BytesMut) -> Option<Bytes> {
    loop {
        if read.len() < 2 {
            return None;
        }
        let len = usize::from(u16::from_be_bytes([read[0], read[1]]));
        if read.len() < 2 + len {
            // Room for the rest, so that the reader does not grow the buffer byte by byte.
            read.reserve(2 + len - read.len());
            return None;
        }
        read.advance(2);
        if len > 0 {
            return Some(read.split_to(len).freeze());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framed_datagrams_come_back_whole_and_in_order() {
        let mut wire = Vec::new();
        assert!(frame_into(&mut wire, b"stun"));
        assert!(frame_into(&mut wire, &[7; 1200]));
        assert_eq!(&wire[..2], &[0, 4]);
        let mut read = BytesMut::from(&wire[..]);
        assert_eq!(next_frame(&mut read).unwrap(), &b"stun"[..]);
        assert_eq!(next_frame(&mut read).unwrap(), &[7; 1200][..]);
        assert!(next_frame(&mut read).is_none());
        assert!(read.is_empty());
    }

    #[test]
    fn a_datagram_split_across_reads_waits_for_its_last_byte() {
        let mut wire = Vec::new();
        frame_into(&mut wire, b"dtls record");
        let mut read = BytesMut::new();
        for (i, byte) in wire.iter().enumerate() {
            assert!(next_frame(&mut read).is_none(), "complete after {i} bytes");
            read.extend_from_slice(&[*byte]);
        }
        assert_eq!(next_frame(&mut read).unwrap(), &b"dtls record"[..]);
    }

    #[test]
    fn empty_frames_are_skipped() {
        let mut read = BytesMut::from(&[0, 0, 0, 0, 0, 2, 9, 9][..]);
        assert_eq!(next_frame(&mut read).unwrap(), &[9, 9][..]);
    }

    #[test]
    fn a_datagram_longer_than_the_length_prefix_is_refused() {
        let mut wire = Vec::new();
        assert!(!frame_into(&mut wire, &vec![0; MAX_FRAME + 1]));
        assert!(wire.is_empty());
        assert!(frame_into(&mut wire, &vec![0; MAX_FRAME]));
    }
}
