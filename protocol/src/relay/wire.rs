//! The relay's bytes: QUIC variable-length integers, control messages, and the header and
//! frames of a group stream. `docs/relay.md` is the prose version of this file.
//!
//! Every control message is `type (varint) | length (varint) | body`, so a receiver skips
//! types it does not know (newer peers may send more) and never has to understand a body to
//! find the next message. Decoding is incremental: [`ControlDecoder`] and [`GroupDecoder`]
//! take bytes as they arrive and yield whole items; a malformed or oversized item is a
//! [`ProtocolError`], never a panic.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::ProtocolError;

/// The protocol versions this build speaks, best first.
pub const SUPPORTED_VERSIONS: &[u64] = &[1];
/// The longest control message body accepted.
pub const MAX_CONTROL_BODY: usize = 16 * 1024;
/// The largest frame accepted on a group stream (a 4K keyframe fits comfortably).
pub const MAX_FRAME_BYTES: usize = 8 * 1024 * 1024;
/// The longest broadcast or track name.
pub const MAX_NAME_BYTES: usize = 256;
/// The first varint of every group stream.
pub const GROUP_STREAM_TYPE: u64 = 0x10;

/// Error codes of SUBSCRIBE_ERROR and SUBSCRIBE_DONE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscribeCode {
    /// No such broadcast or track here.
    NotFound,
    /// The subscription id is already in use on this session.
    DuplicateId,
    /// The publisher ended the track or its broadcast.
    Ended,
    /// The publisher is going away (drain, shutdown).
    GoingAway,
    /// Something else failed at the publisher.
    Internal,
    /// A code from a newer peer.
    Other(u64),
}

impl SubscribeCode {
    pub fn to_u64(self) -> u64 {
        match self {
            SubscribeCode::NotFound => 0x1,
            SubscribeCode::DuplicateId => 0x2,
            SubscribeCode::Ended => 0x3,
            SubscribeCode::GoingAway => 0x4,
            SubscribeCode::Internal => 0x5,
            SubscribeCode::Other(code) => code,
        }
    }

    pub fn from_u64(code: u64) -> SubscribeCode {
        match code {
            0x1 => SubscribeCode::NotFound,
            0x2 => SubscribeCode::DuplicateId,
            0x3 => SubscribeCode::Ended,
            0x4 => SubscribeCode::GoingAway,
            0x5 => SubscribeCode::Internal,
            other => SubscribeCode::Other(other),
        }
    }
}

/// QUIC application error codes for resetting (or stopping) a group stream.
pub mod stream_code {
    /// The subscriber fell further behind than the latency budget; a newer group follows.
    pub const DROPPED_LATE: u32 = 0x1;
    /// The subscription ended (UNSUBSCRIBE or SUBSCRIBE_DONE).
    pub const CANCELLED: u32 = 0x2;
    /// The receiver already has a newer group of this subscription.
    pub const SUPERSEDED: u32 = 0x3;
}

/// QUIC application error codes for closing the whole connection.
pub mod close_code {
    pub const NO_ERROR: u32 = 0x0;
    /// The peer broke the protocol (malformed message, message before SETUP, unknown id).
    pub const PROTOCOL_VIOLATION: u32 = 0x1;
    /// No protocol version in common.
    pub const VERSION_MISMATCH: u32 = 0x2;
}

/// A message on the control stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlMessage {
    /// Client → server, first: the versions the client speaks.
    Setup {
        versions: Vec<u64>,
    },
    /// Server → client: the version chosen.
    SetupOk {
        version: u64,
    },
    /// This side publishes a broadcast.
    Announce {
        broadcast: String,
    },
    /// This side no longer publishes it.
    Unannounce {
        broadcast: String,
    },
    /// Start sending a track, at its newest group.
    Subscribe {
        id: u64,
        broadcast: String,
        track: String,
    },
    SubscribeOk {
        id: u64,
    },
    SubscribeError {
        id: u64,
        code: SubscribeCode,
        reason: String,
    },
    /// Subscriber → publisher: stop sending.
    Unsubscribe {
        id: u64,
    },
    /// Publisher → subscriber: no more groups will come.
    SubscribeDone {
        id: u64,
        code: SubscribeCode,
        reason: String,
    },
    /// Subscriber → publisher: a viewer needs a keyframe.
    KeyframeRequest {
        id: u64,
    },
    /// Subscriber → publisher: what its viewers can take, in bits per second.
    BitrateHint {
        id: u64,
        bits_per_second: u64,
    },
    /// A message type this build does not know; skipped.
    Unknown {
        kind: u64,
    },
}

mod kind {
    pub const SETUP: u64 = 0x01;
    pub const SETUP_OK: u64 = 0x02;
    pub const ANNOUNCE: u64 = 0x03;
    pub const UNANNOUNCE: u64 = 0x04;
    pub const SUBSCRIBE: u64 = 0x05;
    pub const SUBSCRIBE_OK: u64 = 0x06;
    pub const SUBSCRIBE_ERROR: u64 = 0x07;
    pub const UNSUBSCRIBE: u64 = 0x08;
    pub const SUBSCRIBE_DONE: u64 = 0x09;
    pub const KEYFRAME_REQUEST: u64 = 0x0a;
    pub const BITRATE_HINT: u64 = 0x0b;
}

impl ControlMessage {
    /// Appends the message to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        let mut body = BytesMut::new();
        let kind = match self {
            ControlMessage::Setup { versions } => {
                put_varint(&mut body, versions.len() as u64);
                for v in versions {
                    put_varint(&mut body, *v);
                }
                kind::SETUP
            }
            ControlMessage::SetupOk { version } => {
                put_varint(&mut body, *version);
                kind::SETUP_OK
            }
            ControlMessage::Announce { broadcast } => {
                put_name(&mut body, broadcast);
                kind::ANNOUNCE
            }
            ControlMessage::Unannounce { broadcast } => {
                put_name(&mut body, broadcast);
                kind::UNANNOUNCE
            }
            ControlMessage::Subscribe {
                id,
                broadcast,
                track,
            } => {
                put_varint(&mut body, *id);
                put_name(&mut body, broadcast);
                put_name(&mut body, track);
                kind::SUBSCRIBE
            }
            ControlMessage::SubscribeOk { id } => {
                put_varint(&mut body, *id);
                kind::SUBSCRIBE_OK
            }
            ControlMessage::SubscribeError { id, code, reason } => {
                put_varint(&mut body, *id);
                put_varint(&mut body, code.to_u64());
                put_name(&mut body, reason);
                kind::SUBSCRIBE_ERROR
            }
            ControlMessage::Unsubscribe { id } => {
                put_varint(&mut body, *id);
                kind::UNSUBSCRIBE
            }
            ControlMessage::SubscribeDone { id, code, reason } => {
                put_varint(&mut body, *id);
                put_varint(&mut body, code.to_u64());
                put_name(&mut body, reason);
                kind::SUBSCRIBE_DONE
            }
            ControlMessage::KeyframeRequest { id } => {
                put_varint(&mut body, *id);
                kind::KEYFRAME_REQUEST
            }
            ControlMessage::BitrateHint {
                id,
                bits_per_second,
            } => {
                put_varint(&mut body, *id);
                put_varint(&mut body, *bits_per_second);
                kind::BITRATE_HINT
            }
            ControlMessage::Unknown { kind } => *kind,
        };
        put_varint(out, kind);
        put_varint(out, body.len() as u64);
        out.put(body);
    }

    fn decode_body(kind: u64, mut body: &[u8]) -> Result<ControlMessage, ProtocolError> {
        let b = &mut body;
        let message = match kind {
            kind::SETUP => {
                let count = get_varint(b, "SETUP")?;
                // Each version takes at least one byte: a count beyond the body is a lie.
                if count > b.len() as u64 {
                    return Err(ProtocolError::Truncated("SETUP"));
                }
                let versions = (0..count)
                    .map(|_| get_varint(b, "SETUP"))
                    .collect::<Result<_, _>>()?;
                ControlMessage::Setup { versions }
            }
            kind::SETUP_OK => ControlMessage::SetupOk {
                version: get_varint(b, "SETUP_OK")?,
            },
            kind::ANNOUNCE => ControlMessage::Announce {
                broadcast: get_name(b, "ANNOUNCE")?,
            },
            kind::UNANNOUNCE => ControlMessage::Unannounce {
                broadcast: get_name(b, "UNANNOUNCE")?,
            },
            kind::SUBSCRIBE => ControlMessage::Subscribe {
                id: get_varint(b, "SUBSCRIBE")?,
                broadcast: get_name(b, "SUBSCRIBE")?,
                track: get_name(b, "SUBSCRIBE")?,
            },
            kind::SUBSCRIBE_OK => ControlMessage::SubscribeOk {
                id: get_varint(b, "SUBSCRIBE_OK")?,
            },
            kind::SUBSCRIBE_ERROR => ControlMessage::SubscribeError {
                id: get_varint(b, "SUBSCRIBE_ERROR")?,
                code: SubscribeCode::from_u64(get_varint(b, "SUBSCRIBE_ERROR")?),
                reason: get_name(b, "SUBSCRIBE_ERROR")?,
            },
            kind::UNSUBSCRIBE => ControlMessage::Unsubscribe {
                id: get_varint(b, "UNSUBSCRIBE")?,
            },
            kind::SUBSCRIBE_DONE => ControlMessage::SubscribeDone {
                id: get_varint(b, "SUBSCRIBE_DONE")?,
                code: SubscribeCode::from_u64(get_varint(b, "SUBSCRIBE_DONE")?),
                reason: get_name(b, "SUBSCRIBE_DONE")?,
            },
            kind::KEYFRAME_REQUEST => ControlMessage::KeyframeRequest {
                id: get_varint(b, "KEYFRAME_REQUEST")?,
            },
            kind::BITRATE_HINT => ControlMessage::BitrateHint {
                id: get_varint(b, "BITRATE_HINT")?,
                bits_per_second: get_varint(b, "BITRATE_HINT")?,
            },
            other => return Ok(ControlMessage::Unknown { kind: other }),
        };
        if !body.is_empty() {
            return Err(ProtocolError::TrailingBytes(message.name(), body.len()));
        }
        Ok(message)
    }

    /// The message's name as `docs/relay.md` writes it.
    pub fn name(&self) -> &'static str {
        match self {
            ControlMessage::Setup { .. } => "SETUP",
            ControlMessage::SetupOk { .. } => "SETUP_OK",
            ControlMessage::Announce { .. } => "ANNOUNCE",
            ControlMessage::Unannounce { .. } => "UNANNOUNCE",
            ControlMessage::Subscribe { .. } => "SUBSCRIBE",
            ControlMessage::SubscribeOk { .. } => "SUBSCRIBE_OK",
            ControlMessage::SubscribeError { .. } => "SUBSCRIBE_ERROR",
            ControlMessage::Unsubscribe { .. } => "UNSUBSCRIBE",
            ControlMessage::SubscribeDone { .. } => "SUBSCRIBE_DONE",
            ControlMessage::KeyframeRequest { .. } => "KEYFRAME_REQUEST",
            ControlMessage::BitrateHint { .. } => "BITRATE_HINT",
            ControlMessage::Unknown { .. } => "unknown",
        }
    }
}

/// Splits the control stream into messages as its bytes arrive.
#[derive(Debug, Default)]
pub struct ControlDecoder {
    buffer: BytesMut,
}

impl ControlDecoder {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The next whole message, `Ok(None)` until one has arrived.
    pub fn next_message(&mut self) -> Result<Option<ControlMessage>, ProtocolError> {
        let mut peek = &self.buffer[..];
        let Some(kind) = try_varint(&mut peek)? else {
            return Ok(None);
        };
        let Some(len) = try_varint(&mut peek)? else {
            return Ok(None);
        };
        if len > MAX_CONTROL_BODY as u64 {
            return Err(ProtocolError::ControlTooLong(len));
        }
        let len = len as usize;
        if peek.len() < len {
            return Ok(None);
        }
        let header = self.buffer.len() - peek.len();
        let message = ControlMessage::decode_body(kind, &peek[..len]);
        self.buffer.advance(header + len);
        message.map(Some)
    }

    /// True when bytes of an unfinished message are buffered.
    pub fn is_mid_message(&self) -> bool {
        !self.buffer.is_empty()
    }
}

/// The header of a group stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupHeader {
    pub subscription: u64,
    /// The group's sequence number in its track; newer groups have higher numbers.
    pub group: u64,
}

impl GroupHeader {
    pub fn encode(&self, out: &mut BytesMut) {
        put_varint(out, GROUP_STREAM_TYPE);
        put_varint(out, self.subscription);
        put_varint(out, self.group);
    }
}

/// One frame on a group stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayFrame {
    /// Presentation time in the track's timescale.
    pub timestamp: u64,
    /// Presentation minus decode time (B-frames), 0 for sources in presentation order.
    pub composition_offset: u32,
    pub keyframe: bool,
    pub payload: Bytes,
}

const FLAG_KEYFRAME: u8 = 0x01;
/// A composition offset (varint) follows the timestamp.
const FLAG_REORDERED: u8 = 0x02;

impl RelayFrame {
    /// `flags (1 byte) | timestamp (varint) | [composition offset (varint)] | length
    /// (varint) | payload`; the offset is there only when the flags say so.
    pub fn encode(&self, out: &mut BytesMut) {
        self.encode_header(out);
        out.extend_from_slice(&self.payload);
    }

    /// Everything before the payload, so that a sender can pass the payload on without
    /// copying it.
    pub fn encode_header(&self, out: &mut BytesMut) {
        let mut flags = if self.keyframe { FLAG_KEYFRAME } else { 0 };
        if self.composition_offset != 0 {
            flags |= FLAG_REORDERED;
        }
        out.put_u8(flags);
        put_varint(out, self.timestamp);
        if self.composition_offset != 0 {
            put_varint(out, u64::from(self.composition_offset));
        }
        put_varint(out, self.payload.len() as u64);
    }
}

/// What a group stream yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupItem {
    Header(GroupHeader),
    Frame(RelayFrame),
}

/// Takes the frame that starts `offset` bytes into `buffer` once all of it has arrived:
/// `buffer` then loses those bytes and the frame; `Ok(None)` until then, buffer untouched.
/// The bytes before `offset` are the caller's (already parsed) prefix.
pub fn take_frame(
    buffer: &mut BytesMut,
    offset: usize,
) -> Result<Option<RelayFrame>, ProtocolError> {
    let mut peek = &buffer[offset..];
    let Some(&flags) = peek.first() else {
        return Ok(None);
    };
    if flags & !(FLAG_KEYFRAME | FLAG_REORDERED) != 0 {
        return Err(ProtocolError::UnknownFlags(flags));
    }
    peek = &peek[1..];
    let Some(timestamp) = try_varint(&mut peek)? else {
        return Ok(None);
    };
    let composition_offset = if flags & FLAG_REORDERED != 0 {
        let Some(offset) = try_varint(&mut peek)? else {
            return Ok(None);
        };
        u32::try_from(offset).map_err(|_| ProtocolError::VarintTooLarge)?
    } else {
        0
    };
    let Some(len) = try_varint(&mut peek)? else {
        return Ok(None);
    };
    if len > MAX_FRAME_BYTES as u64 {
        return Err(ProtocolError::FrameTooLong(len));
    }
    let len = len as usize;
    if peek.len() < len {
        return Ok(None);
    }
    let header = buffer.len() - peek.len();
    buffer.advance(header);
    let payload = buffer.split_to(len).freeze();
    Ok(Some(RelayFrame {
        timestamp,
        composition_offset,
        keyframe: flags & FLAG_KEYFRAME != 0,
        payload,
    }))
}

/// Splits one group stream into its header and frames as its bytes arrive.
#[derive(Debug, Default)]
pub struct GroupDecoder {
    buffer: BytesMut,
    header_seen: bool,
}

impl GroupDecoder {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The next header or frame, `Ok(None)` until one has arrived.
    pub fn next_item(&mut self) -> Result<Option<GroupItem>, ProtocolError> {
        let mut peek = &self.buffer[..];
        if !self.header_seen {
            let Some(kind) = try_varint(&mut peek)? else {
                return Ok(None);
            };
            if kind != GROUP_STREAM_TYPE {
                return Err(ProtocolError::UnknownStreamType(kind));
            }
            let Some(subscription) = try_varint(&mut peek)? else {
                return Ok(None);
            };
            let Some(group) = try_varint(&mut peek)? else {
                return Ok(None);
            };
            let used = self.buffer.len() - peek.len();
            self.buffer.advance(used);
            self.header_seen = true;
            return Ok(Some(GroupItem::Header(GroupHeader {
                subscription,
                group,
            })));
        }
        Ok(take_frame(&mut self.buffer, 0)?.map(GroupItem::Frame))
    }

    /// Checks that the stream's end (FIN) fell between items.
    pub fn finish(&self) -> Result<(), ProtocolError> {
        match (self.header_seen, self.buffer.is_empty()) {
            (_, true) => Ok(()),
            (false, false) => Err(ProtocolError::EndedMidItem("group header")),
            (true, false) => Err(ProtocolError::EndedMidItem("frame")),
        }
    }
}

/// Appends a QUIC variable-length integer (RFC 9000 §16). Values above 2^62 - 1 cannot be
/// encoded; every caller passes lengths, ids or sequence numbers far below that.
pub fn put_varint(out: &mut impl BufMut, value: u64) {
    debug_assert!(value < 1 << 62, "varint {value} does not fit in 62 bits");
    if value < 1 << 6 {
        out.put_u8(value as u8);
    } else if value < 1 << 14 {
        out.put_u16(0x4000 | value as u16);
    } else if value < 1 << 30 {
        out.put_u32(0x8000_0000 | value as u32);
    } else {
        out.put_u64(0xc000_0000_0000_0000 | (value & ((1 << 62) - 1)));
    }
}

/// Reads a varint; `Ok(None)` (and `buf` untouched) when it has not fully arrived.
pub fn try_varint(buf: &mut &[u8]) -> Result<Option<u64>, ProtocolError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let len = 1usize << (first >> 6);
    if buf.len() < len {
        return Ok(None);
    }
    let mut value = u64::from(first & 0x3f);
    for &byte in &buf[1..len] {
        value = (value << 8) | u64::from(byte);
    }
    *buf = &buf[len..];
    Ok(Some(value))
}

fn get_varint(buf: &mut &[u8], message: &'static str) -> Result<u64, ProtocolError> {
    try_varint(buf)?.ok_or(ProtocolError::Truncated(message))
}

fn put_name(out: &mut BytesMut, name: &str) {
    put_varint(out, name.len() as u64);
    out.extend_from_slice(name.as_bytes());
}

fn get_name(buf: &mut &[u8], message: &'static str) -> Result<String, ProtocolError> {
    let len = get_varint(buf, message)?;
    if len > MAX_NAME_BYTES as u64 {
        return Err(ProtocolError::NameTooLong(len));
    }
    let len = len as usize;
    if buf.len() < len {
        return Err(ProtocolError::Truncated(message));
    }
    let name = std::str::from_utf8(&buf[..len]).map_err(|_| ProtocolError::NameNotUtf8)?;
    *buf = &buf[len..];
    Ok(name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_message() -> Vec<ControlMessage> {
        vec![
            ControlMessage::Setup {
                versions: vec![1, 2, 1_000_000],
            },
            ControlMessage::SetupOk { version: 1 },
            ControlMessage::Announce {
                broadcast: "show".into(),
            },
            ControlMessage::Unannounce {
                broadcast: "show".into(),
            },
            ControlMessage::Subscribe {
                id: 7,
                broadcast: "show".into(),
                track: "video".into(),
            },
            ControlMessage::SubscribeOk { id: 7 },
            ControlMessage::SubscribeError {
                id: 8,
                code: SubscribeCode::NotFound,
                reason: "no broadcast \"x\"".into(),
            },
            ControlMessage::Unsubscribe { id: 7 },
            ControlMessage::SubscribeDone {
                id: 7,
                code: SubscribeCode::Other(0x99),
                reason: String::new(),
            },
            ControlMessage::KeyframeRequest { id: 7 },
            ControlMessage::BitrateHint {
                id: 7,
                bits_per_second: 1_500_000,
            },
        ]
    }

    #[test]
    fn varints_round_trip_at_every_length_boundary() {
        for value in [
            0,
            63,
            64,
            16_383,
            16_384,
            (1 << 30) - 1,
            1 << 30,
            (1 << 62) - 1,
        ] {
            let mut out = BytesMut::new();
            put_varint(&mut out, value);
            let mut read = &out[..];
            assert_eq!(try_varint(&mut read), Ok(Some(value)));
            assert!(read.is_empty());
        }
        // RFC 9000 §A.1 examples.
        let mut read: &[u8] = &[0x9d, 0x7f, 0x3e, 0x7d];
        assert_eq!(try_varint(&mut read), Ok(Some(494_878_333)));
        let mut read: &[u8] = &[0x7b, 0xbd];
        assert_eq!(try_varint(&mut read), Ok(Some(15_293)));
    }

    #[test]
    fn every_control_message_round_trips_even_byte_by_byte() {
        let mut wire = BytesMut::new();
        for message in every_message() {
            message.encode(&mut wire);
        }
        let mut decoder = ControlDecoder::default();
        let mut decoded = Vec::new();
        for byte in wire.iter() {
            decoder.push(&[*byte]);
            while let Some(message) = decoder.next_message().unwrap() {
                decoded.push(message);
            }
        }
        assert_eq!(decoded, every_message());
        assert!(!decoder.is_mid_message());
    }

    #[test]
    fn unknown_control_messages_are_skipped_by_length() {
        let mut wire = BytesMut::new();
        put_varint(&mut wire, 0x3f00);
        put_varint(&mut wire, 3);
        wire.extend_from_slice(b"new");
        ControlMessage::SubscribeOk { id: 1 }.encode(&mut wire);
        let mut decoder = ControlDecoder::default();
        decoder.push(&wire);
        assert_eq!(
            decoder.next_message(),
            Ok(Some(ControlMessage::Unknown { kind: 0x3f00 }))
        );
        assert_eq!(
            decoder.next_message(),
            Ok(Some(ControlMessage::SubscribeOk { id: 1 }))
        );
    }

    #[test]
    fn malformed_control_messages_are_errors_with_a_reason() {
        let cases: Vec<(Vec<u8>, ProtocolError)> = vec![
            // SUBSCRIBE_OK with a byte too many.
            (
                vec![0x06, 0x02, 0x01, 0x00],
                ProtocolError::TrailingBytes("SUBSCRIBE_OK", 1),
            ),
            // SUBSCRIBE whose name runs past the body.
            (
                vec![0x05, 0x03, 0x01, 0x05, b'a'],
                ProtocolError::Truncated("SUBSCRIBE"),
            ),
            // ANNOUNCE with invalid UTF-8.
            (vec![0x03, 0x02, 0x01, 0xff], ProtocolError::NameNotUtf8),
            // A body longer than the limit.
            (
                vec![0x03, 0x80, 0x01, 0x00, 0x00],
                ProtocolError::ControlTooLong(65_536),
            ),
            // SETUP claiming more versions than bytes.
            (
                vec![0x01, 0x02, 0x3f, 0x01],
                ProtocolError::Truncated("SETUP"),
            ),
        ];
        for (bytes, expected) in cases {
            let mut decoder = ControlDecoder::default();
            decoder.push(&bytes);
            assert_eq!(decoder.next_message(), Err(expected), "{bytes:02x?}");
        }
    }

    #[test]
    fn a_group_stream_round_trips_split_anywhere() {
        let header = GroupHeader {
            subscription: 3,
            group: 70_000,
        };
        let frames: Vec<RelayFrame> = (0..5u8)
            .map(|i| RelayFrame {
                timestamp: 90_000 * u64::from(i),
                // B-frame sources carry an offset; others do not.
                composition_offset: if i % 2 == 0 { 0 } else { 3_000 * u32::from(i) },
                keyframe: i == 0,
                payload: Bytes::from(vec![i; 100 * usize::from(i)]),
            })
            .collect();
        let mut wire = BytesMut::new();
        header.encode(&mut wire);
        for frame in &frames {
            frame.encode(&mut wire);
        }
        for split in [1, 2, 7, 150, wire.len()] {
            let mut decoder = GroupDecoder::default();
            let mut items = Vec::new();
            for chunk in wire.chunks(split) {
                decoder.push(chunk);
                while let Some(item) = decoder.next_item().unwrap() {
                    items.push(item);
                }
            }
            decoder.finish().unwrap();
            let mut expected = vec![GroupItem::Header(header)];
            expected.extend(frames.iter().cloned().map(GroupItem::Frame));
            assert_eq!(items, expected, "split every {split} bytes");
        }
    }

    #[test]
    fn a_group_stream_that_ends_mid_frame_or_lies_is_refused() {
        let mut wire = BytesMut::new();
        GroupHeader {
            subscription: 1,
            group: 1,
        }
        .encode(&mut wire);
        wire.extend_from_slice(&[0x01, 0x00, 0x05, b'a']);
        let mut decoder = GroupDecoder::default();
        decoder.push(&wire);
        assert!(matches!(
            decoder.next_item(),
            Ok(Some(GroupItem::Header(_)))
        ));
        assert_eq!(decoder.next_item(), Ok(None));
        assert_eq!(decoder.finish(), Err(ProtocolError::EndedMidItem("frame")));

        let mut decoder = GroupDecoder::default();
        decoder.push(&[0x11]);
        assert_eq!(
            decoder.next_item(),
            Err(ProtocolError::UnknownStreamType(0x11))
        );

        let mut decoder = GroupDecoder::default();
        decoder.push(&[0x10, 0x01, 0x01, 0x80]);
        decoder.next_item().unwrap();
        assert_eq!(decoder.next_item(), Err(ProtocolError::UnknownFlags(0x80)));

        let mut decoder = GroupDecoder::default();
        decoder.push(&[0x10, 0x01, 0x01, 0x00, 0x00, 0xc0, 0, 0, 0, 0xff, 0, 0, 0]);
        decoder.next_item().unwrap();
        assert_eq!(
            decoder.next_item(),
            Err(ProtocolError::FrameTooLong(0xff00_0000))
        );
    }

    /// The fuzz target's property (`protocol/fuzz`), run over seeded random inputs on
    /// stable: any bytes, split anywhere, give items or an error, never a panic.
    #[test]
    fn random_bytes_never_panic_the_decoders() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let now = std::time::Instant::now();
        for _ in 0..20_000 {
            let len = (next() % 64) as usize;
            let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            crate::relay::fuzz_decoders(&bytes, now);
        }
    }
}
