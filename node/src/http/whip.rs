//! WHIP (RFC 9725): publishers POST an SDP offer to `/whip/{stream}` and get `201 Created`
//! with the answer and a `Location` to DELETE when they stop. The media side is
//! `cascade_roles::origin::whip`.

use super::AppState;
use super::sdp_exchange::{self, Exchange};
use crate::access::Action;

static WHIP: Exchange = Exchange {
    endpoint: "whip",
    action: Action::Publish,
};

pub(crate) fn routes() -> axum::Router<AppState> {
    sdp_exchange::routes(&WHIP)
}
