//! WHEP: viewers POST an SDP offer to `/whep/{stream}` and get `201 Created` with the answer
//! and a `Location` to DELETE when they leave. The media side is `cascade_roles::edge::whep`.

use super::AppState;
use super::sdp_exchange::{self, Exchange};
use crate::access::Action;

static WHEP: Exchange = Exchange {
    endpoint: "whep",
    action: Action::Play,
};

pub(crate) fn routes() -> axum::Router<AppState> {
    sdp_exchange::routes(&WHEP)
}
