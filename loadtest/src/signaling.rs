//! The HTTP half of WHIP/WHEP (RFC 9725 and the WHEP draft): POST an offer, get `201` with an
//! answer and a session `Location`; DELETE the `Location` to leave. Redirects (`307`/`308`,
//! as a cluster answers to send a viewer to its edge) are followed with the offer re-sent.

use std::time::Duration;

use crate::figures::FailureReason;

/// How long a signalling request may take before the session counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The WHIP or WHEP URLs of a run. Any node of a cluster answers any request, so a client
/// that lost its session tries the next URL: the node it used may be the one that died.
#[derive(Debug, Clone)]
pub struct Endpoints(Vec<String>);

impl Endpoints {
    /// At least one URL (clap requires it).
    pub fn new(urls: Vec<String>) -> Self {
        assert!(!urls.is_empty(), "at least one URL");
        Self(urls)
    }

    /// Every URL.
    pub fn all(&self) -> &[String] {
        &self.0
    }

    /// The URL for the `attempt`-th session (1-based): the first, then each next in turn.
    pub fn for_attempt(&self, attempt: u32) -> &str {
        &self.0[attempt.saturating_sub(1) as usize % self.0.len()]
    }
}

/// A negotiated session.
#[derive(Debug)]
pub struct Negotiated {
    pub answer: String,
    /// Absolute URL of the session resource.
    pub session_url: Option<String>,
}

/// One HTTP client per worker thread: connection reuse without cross-thread locking.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .redirect(reqwest::redirect::Policy::limited(5))
        .build()
        .expect("a plain HTTP client always builds")
}

/// POSTs `offer` to a WHIP or WHEP endpoint.
pub async fn exchange(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    offer: String,
) -> Result<Negotiated, FailureReason> {
    let mut request = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/sdp")
        .body(offer);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.map_err(|e| failure_of(url, &e))?;
    let status = response.status().as_u16();
    let final_url = response.url().clone();
    let location = response
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|l| final_url.join(l).ok())
        .map(|u| u.to_string());
    let body = response.text().await.unwrap_or_default();
    if status != 201 {
        tracing::debug!(%url, status, body = %body.trim(), "signalling refused");
        return Err(FailureReason::Http(status));
    }
    Ok(Negotiated {
        answer: body,
        session_url: location,
    })
}

/// Why a signalling request got no answer (logged): a timeout, or no server there.
pub fn failure_of(url: &str, error: &reqwest::Error) -> FailureReason {
    tracing::debug!(%url, %error, "signalling request failed");
    if error.is_timeout() {
        FailureReason::HttpTimeout
    } else {
        FailureReason::Unreachable
    }
}

/// Ends a session (best effort: the server also notices the transport going away).
pub async fn delete(client: &reqwest::Client, session_url: &str, token: Option<&str>) {
    let mut request = client.delete(session_url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Err(e) = request.send().await {
        tracing::debug!(%session_url, error = %e, "DELETE failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnects_go_round_the_given_urls() {
        let urls = Endpoints::new(vec!["a".into(), "b".into()]);
        let picked: Vec<&str> = (1..=4).map(|n| urls.for_attempt(n)).collect();
        assert_eq!(picked, ["a", "b", "a", "b"]);
    }
}
