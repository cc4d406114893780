//! The RTMP chunk stream: messages cut into chunks on chunk streams with compressed headers
//! (RTMP specification §5.3). [`ChunkReader`] reassembles a peer's messages from any slices of
//! bytes; [`write_message`] cuts ours.
//!
//! Bounds: a message is at most 16 MiB (the 24-bit length field), the chunk size at most
//! 16 MiB, and a peer may use at most [`MAX_OPEN_CHUNK_STREAMS`] chunk streams; what it has
//! not sent is never allocated.

/// A complete message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The message type id (1 set chunk size, 8 audio, 9 video, 20 AMF0 command, ...).
    pub type_id: u8,
    /// The message stream id (0 for control, the publishing stream's otherwise).
    pub stream_id: u32,
    /// Milliseconds, the sender's 32-bit clock.
    pub timestamp: u32,
    /// The message body.
    pub payload: Vec<u8>,
}

/// Why bytes are not an RTMP chunk stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    /// A type-1/2/3 header on a chunk stream that never had a type-0 one.
    #[error("chunk stream {0} continues a message it never started")]
    NoPreviousHeader(u32),
    /// Too many chunk streams.
    #[error("more than {MAX_OPEN_CHUNK_STREAMS} chunk streams")]
    TooManyChunkStreams,
    /// A chunk size of 0 or beyond 16 MiB.
    #[error("invalid chunk size {0}")]
    BadChunkSize(u32),
}

/// Most chunk streams a peer may use (encoders use four or five).
pub const MAX_OPEN_CHUNK_STREAMS: usize = 64;
/// Largest chunk size accepted.
const MAX_CHUNK_SIZE: u32 = 0xff_ffff;
const EXTENDED: u32 = 0xff_ffff;

#[derive(Debug, Clone, Default)]
struct StreamState {
    timestamp: u32,
    delta: u32,
    length: usize,
    type_id: u8,
    stream_id: u32,
    extended: bool,
    started: bool,
    partial: Vec<u8>,
}

/// Reassembles messages from a peer's chunk stream.
#[derive(Debug)]
pub struct ChunkReader {
    chunk_size: usize,
    buffer: Vec<u8>,
    streams: std::collections::HashMap<u32, StreamState>,
}

impl Default for ChunkReader {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkReader {
    /// A reader at the default chunk size of 128.
    pub fn new() -> Self {
        Self {
            chunk_size: 128,
            buffer: Vec::new(),
            streams: std::collections::HashMap::new(),
        }
    }

    /// The peer changed its chunk size (a Set Chunk Size message).
    pub fn set_chunk_size(&mut self, size: u32) -> Result<(), ChunkError> {
        let size = size & 0x7fff_ffff;
        if size == 0 || size > MAX_CHUNK_SIZE {
            return Err(ChunkError::BadChunkSize(size));
        }
        self.chunk_size = size as usize;
        Ok(())
    }

    /// The peer abandoned the message on `chunk_stream` (an Abort message).
    pub fn abort(&mut self, chunk_stream: u32) {
        if let Some(state) = self.streams.get_mut(&chunk_stream) {
            state.partial = Vec::new();
        }
    }

    /// Takes bytes in.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The next complete message, if the bytes so far hold one. A Set Chunk Size message is
    /// returned like any other; the caller applies it before asking for the next.
    pub fn next_message(&mut self) -> Result<Option<Message>, ChunkError> {
        loop {
            let Some((consumed, message)) = self.parse_chunk()? else {
                return Ok(None);
            };
            self.buffer.drain(..consumed);
            if message.is_some() {
                return Ok(message);
            }
        }
    }

    /// One chunk from the front of the buffer: how many bytes it took and the message it
    /// completed, or `None` when the buffer does not hold a whole chunk yet.
    fn parse_chunk(&mut self) -> Result<Option<(usize, Option<Message>)>, ChunkError> {
        let b = &self.buffer;
        let Some(&first) = b.first() else {
            return Ok(None);
        };
        let fmt = first >> 6;
        let (chunk_stream, mut at) = match first & 0x3f {
            0 => match b.get(1) {
                Some(&x) => (64 + u32::from(x), 2),
                None => return Ok(None),
            },
            1 => match (b.get(1), b.get(2)) {
                (Some(&lo), Some(&hi)) => (64 + u32::from(lo) + 256 * u32::from(hi), 3),
                _ => return Ok(None),
            },
            id => (u32::from(id), 1),
        };
        let header_len = [11, 7, 3, 0][usize::from(fmt)];
        let Some(header) = b.get(at..at + header_len) else {
            return Ok(None);
        };
        at += header_len;
        let u24 = |h: &[u8]| (u32::from(h[0]) << 16) | (u32::from(h[1]) << 8) | u32::from(h[2]);
        let known = self.streams.contains_key(&chunk_stream);
        if fmt != 0 && !known {
            return Err(ChunkError::NoPreviousHeader(chunk_stream));
        }
        if !known && self.open_streams() >= MAX_OPEN_CHUNK_STREAMS {
            return Err(ChunkError::TooManyChunkStreams);
        }
        let mut state = self.streams.get(&chunk_stream).cloned().unwrap_or_default();
        let starting = state.partial.is_empty();
        let field = match fmt {
            0 => {
                state.length = u24(&header[3..6]) as usize;
                state.type_id = header[6];
                state.stream_id = u32::from_le_bytes([header[7], header[8], header[9], header[10]]);
                Some(u24(&header[0..3]))
            }
            1 => {
                state.length = u24(&header[3..6]) as usize;
                state.type_id = header[6];
                Some(u24(&header[0..3]))
            }
            2 => Some(u24(&header[0..3])),
            _ => None,
        };
        let extended = match field {
            Some(value) => value == EXTENDED,
            None => state.extended,
        };
        let extended_value = if extended {
            let Some(e) = b.get(at..at + 4) else {
                return Ok(None);
            };
            at += 4;
            Some(u32::from_be_bytes([e[0], e[1], e[2], e[3]]))
        } else {
            None
        };
        let wanted = state
            .length
            .saturating_sub(state.partial.len())
            .min(self.chunk_size);
        let Some(data) = b.get(at..at + wanted) else {
            return Ok(None);
        };
        // The whole chunk is here: apply its header.
        state.extended = extended;
        let value = extended_value.or(field);
        match fmt {
            0 => {
                state.timestamp = value.unwrap_or(0);
                state.delta = 0;
            }
            1 | 2 => {
                state.delta = value.unwrap_or(0);
                state.timestamp = state.timestamp.wrapping_add(state.delta);
            }
            _ if starting && state.started => {
                state.timestamp = state.timestamp.wrapping_add(state.delta);
            }
            _ => {}
        }
        state.started = true;
        state.partial.extend_from_slice(data);
        at += wanted;
        let message = if state.partial.len() >= state.length {
            Some(Message {
                type_id: state.type_id,
                stream_id: state.stream_id,
                timestamp: state.timestamp,
                payload: std::mem::take(&mut state.partial),
            })
        } else {
            None
        };
        self.streams.insert(chunk_stream, state);
        Ok(Some((at, message)))
    }

    fn open_streams(&self) -> usize {
        self.streams.len()
    }
}

/// Appends `message` to `out` as chunks of `chunk_size` on `chunk_stream` (2 to 63): a type-0
/// header, then type-3 continuations.
pub fn write_message(out: &mut Vec<u8>, chunk_stream: u8, chunk_size: usize, message: &Message) {
    let extended = message.timestamp >= EXTENDED;
    let stamp = if extended {
        EXTENDED
    } else {
        message.timestamp
    };
    let len = message.payload.len() as u32;
    out.push(chunk_stream & 0x3f);
    out.extend_from_slice(&stamp.to_be_bytes()[1..]);
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(message.type_id);
    out.extend_from_slice(&message.stream_id.to_le_bytes());
    if extended {
        out.extend_from_slice(&message.timestamp.to_be_bytes());
    }
    for (i, chunk) in message.payload.chunks(chunk_size.max(1)).enumerate() {
        if i > 0 {
            out.push(0xc0 | (chunk_stream & 0x3f));
            if extended {
                out.extend_from_slice(&message.timestamp.to_be_bytes());
            }
        }
        out.extend_from_slice(chunk);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(type_id: u8, timestamp: u32, len: usize) -> Message {
        Message {
            type_id,
            stream_id: 1,
            timestamp,
            payload: (0..len).map(|i| i as u8).collect(),
        }
    }

    #[test]
    fn messages_split_into_chunks_come_back_whole_from_any_slicing() {
        let sent = [
            message(9, 1000, 700),
            message(8, 1010, 5),
            message(9, 0x0100_0000, 300), // an extended timestamp
        ];
        let mut wire = Vec::new();
        for m in &sent {
            write_message(&mut wire, 6, 128, m);
        }
        for slice in [1, 7, 128, wire.len()] {
            let mut reader = ChunkReader::new();
            let mut got = Vec::new();
            for piece in wire.chunks(slice) {
                reader.push(piece);
                while let Some(m) = reader.next_message().unwrap() {
                    got.push(m);
                }
            }
            assert_eq!(got, sent, "sliced by {slice}");
        }
    }

    #[test]
    fn compressed_headers_add_their_deltas() {
        // fmt 0 at 100 (len 2, video), fmt 2 delta 40, fmt 3 repeats the delta.
        let mut wire = vec![0x04, 0, 0, 100, 0, 0, 2, 9, 1, 0, 0, 0, 0xaa, 0xbb];
        wire.extend_from_slice(&[0x84, 0, 0, 40, 0xcc, 0xdd]);
        wire.extend_from_slice(&[0xc4, 0xee, 0xff]);
        let mut reader = ChunkReader::new();
        reader.push(&wire);
        let stamps: Vec<u32> = std::iter::from_fn(|| reader.next_message().unwrap())
            .map(|m| m.timestamp)
            .collect();
        assert_eq!(stamps, vec![100, 140, 180]);
    }

    #[test]
    fn a_continuation_without_a_start_and_a_zero_chunk_size_are_errors() {
        let mut reader = ChunkReader::new();
        reader.push(&[0xc5, 1, 2, 3]);
        assert_eq!(reader.next_message(), Err(ChunkError::NoPreviousHeader(5)));
        assert!(ChunkReader::new().set_chunk_size(0).is_err());
    }

    #[test]
    fn too_many_half_sent_messages_are_refused() {
        let mut reader = ChunkReader::new();
        for id in 0..=MAX_OPEN_CHUNK_STREAMS as u8 {
            // Each on its own chunk stream: a first chunk (128 bytes) of a 1000-byte message.
            reader.push(&[0x00, id, 0, 0, 0, 0, 0x03, 0xe8, 9, 1, 0, 0, 0]);
            reader.push(&[7; 128]);
        }
        let mut result = Ok(None);
        for _ in 0..=MAX_OPEN_CHUNK_STREAMS {
            result = reader.next_message();
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(ChunkError::TooManyChunkStreams));
    }
}
