//! The relay protocol between Cascade nodes, Media-over-QUIC style: broadcasts are announced,
//! tracks subscribed from their newest group, and every group travels on its own QUIC
//! unidirectional stream so that a late group can be dropped alone. `docs/relay.md` specifies
//! the wire format, versioning and error codes.
//!
//! - [`wire`]: the bytes — varints, control messages, group streams — with incremental
//!   decoders that refuse bad input with a [`crate::ProtocolError`].
//! - [`session`]: one connection's state machine, sans IO, driven by quinn in `roles`.
//! - [`merge`]: one track fed by an active and a standby upstream: whose frames go in.

pub mod merge;
pub mod session;
pub mod wire;

pub use session::{Event, LocalStream, Output, RemoteStream, Role, Session, SessionConfig};
pub use wire::{RelayFrame, SubscribeCode};

/// The fuzz target's body (`protocol/fuzz`): feeds `data` to both decoders, split at
/// points taken from the data itself, and to sessions of both roles. Must never panic.
pub fn fuzz_decoders(data: &[u8], now: std::time::Instant) {
    let split = usize::from(data.first().copied().unwrap_or(1)).max(1);
    let mut control = wire::ControlDecoder::default();
    let mut group = wire::GroupDecoder::default();
    for chunk in data.chunks(split) {
        control.push(chunk);
        while let Ok(Some(_)) = control.next_message() {}
        group.push(chunk);
        while let Ok(Some(_)) = group.next_item() {}
    }
    let _ = group.finish();
    // The same bytes behind a valid group header reach the frame decoder.
    let mut framed = wire::GroupDecoder::default();
    framed.push(&[0x10, 0x00, 0x00]);
    framed.push(data);
    while let Ok(Some(_)) = framed.next_item() {}
    // And into a session, both roles, as control and as a group stream.
    for role in [Role::Client, Role::Server] {
        let mut session = Session::new(role, SessionConfig::default());
        session.handle_control(data);
        session.handle_group_data(RemoteStream(0), data, now);
        session.handle_timeout(now + std::time::Duration::from_secs(10));
        session.handle_group_end(RemoteStream(0));
        while session.poll_output().is_some() {}
    }
}
