//! Just enough STUN (RFC 8489) to route a datagram from an unknown address to its session.
//!
//! A WebRTC peer's first datagram to a new address is an ICE connectivity check: a STUN
//! Binding request whose USERNAME is `<recipient's ufrag>:<sender's ufrag>` (RFC 8445
//! §7.2.2). The recipient's part names one of our sessions, so one lookup in a map finds it,
//! whatever the number of sessions: junk from an unknown source costs O(1), never a question
//! to every session. The message integrity is still checked by the session itself.

/// The STUN magic cookie (RFC 8489 §5).
const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
/// Binding request.
const BINDING_REQUEST: u16 = 0x0001;
/// The USERNAME attribute.
const USERNAME: u16 = 0x0006;
const HEADER_LEN: usize = 20;
/// RFC 8489 caps USERNAME at 513 bytes.
const MAX_USERNAME: usize = 513;

/// The recipient's ufrag of a STUN Binding request: the part of USERNAME before `:`.
/// `None` for anything else (not STUN, not a Binding request, malformed, no USERNAME).
pub fn binding_request_recipient_ufrag(datagram: &[u8]) -> Option<&str> {
    if datagram.len() < HEADER_LEN || datagram[4..8] != MAGIC_COOKIE {
        return None;
    }
    let message_type = u16::from_be_bytes([datagram[0], datagram[1]]);
    if message_type != BINDING_REQUEST {
        return None;
    }
    let length = usize::from(u16::from_be_bytes([datagram[2], datagram[3]]));
    let body = datagram.get(HEADER_LEN..HEADER_LEN + length)?;
    let mut at = 0;
    while at + 4 <= body.len() {
        let kind = u16::from_be_bytes([body[at], body[at + 1]]);
        let len = usize::from(u16::from_be_bytes([body[at + 2], body[at + 3]]));
        let value = body.get(at + 4..at + 4 + len)?;
        if kind == USERNAME {
            if len > MAX_USERNAME {
                return None;
            }
            let username = std::str::from_utf8(value).ok()?;
            let (recipient, _sender) = username.split_once(':')?;
            return (!recipient.is_empty()).then_some(recipient);
        }
        // Attributes are padded to a multiple of four bytes.
        at += 4 + len.div_ceil(4) * 4;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding_request(attributes: &[(u16, &[u8])]) -> Vec<u8> {
        let mut body = Vec::new();
        for (kind, value) in attributes {
            body.extend_from_slice(&kind.to_be_bytes());
            body.extend_from_slice(&(value.len() as u16).to_be_bytes());
            body.extend_from_slice(value);
            body.resize(body.len().div_ceil(4) * 4, 0);
        }
        let mut message = vec![0x00, 0x01];
        message.extend_from_slice(&(body.len() as u16).to_be_bytes());
        message.extend_from_slice(&MAGIC_COOKIE);
        message.extend_from_slice(&[7; 12]);
        message.extend_from_slice(&body);
        message
    }

    #[test]
    fn the_recipient_ufrag_is_read_past_other_attributes() {
        let message = binding_request(&[
            (0x8022, b"software"), // SOFTWARE, padded
            (USERNAME, b"srvUfrag:cliU"),
            (0x0008, &[0; 20]), // MESSAGE-INTEGRITY
        ]);
        assert_eq!(binding_request_recipient_ufrag(&message), Some("srvUfrag"));
    }

    #[test]
    fn anything_but_a_well_formed_binding_request_names_nobody() {
        let good = binding_request(&[(USERNAME, b"a:b")]);
        assert_eq!(binding_request_recipient_ufrag(&good), Some("a"));
        let mut response = good.clone();
        response[1] = 0x01;
        response[0] = 0x01; // Binding success response
        assert_eq!(binding_request_recipient_ufrag(&response), None);
        let mut no_cookie = good.clone();
        no_cookie[4] = 0;
        assert_eq!(binding_request_recipient_ufrag(&no_cookie), None);
        assert_eq!(
            binding_request_recipient_ufrag(&good[..good.len() - 1]),
            None,
            "truncated"
        );
        assert_eq!(
            binding_request_recipient_ufrag(&binding_request(&[(USERNAME, b"nocolon")])),
            None
        );
        assert_eq!(
            binding_request_recipient_ufrag(&binding_request(&[(USERNAME, b":b")])),
            None
        );
        assert_eq!(
            binding_request_recipient_ufrag(&binding_request(&[(USERNAME, &[0xff, b':', b'b'])])),
            None
        );
        assert_eq!(binding_request_recipient_ufrag(&binding_request(&[])), None);
        assert_eq!(
            binding_request_recipient_ufrag(&[0x80, 0x60, 0, 0]),
            None,
            "RTP"
        );
        assert_eq!(binding_request_recipient_ufrag(&[]), None);
        // An attribute claiming more bytes than the message has.
        let mut lying = binding_request(&[(USERNAME, b"a:b")]);
        lying[22] = 0x40;
        assert_eq!(binding_request_recipient_ufrag(&lying), None);
    }
}
