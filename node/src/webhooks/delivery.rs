//! One receiver's delivery loop: its oldest event is POSTed until the receiver answers 2xx
//! within [`ATTEMPT_TIMEOUT`], waiting [`retry_delay`] between failures; then the event is
//! removed from the outbox and the next one goes. Events reach a receiver in the order they
//! happened, at least once (a receiver deduplicates by the event's `id`).

use std::sync::Arc;
use std::time::Duration;

use super::outbox::Outbox;
use super::{Receiver, signature};

/// How long a receiver has to answer one delivery.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest wait between attempts.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);

/// The wait after `failures` failed attempts in a row: 1 s, 2 s, 4 s, … up to
/// [`MAX_RETRY_DELAY`].
pub fn retry_delay(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(16);
    Duration::from_secs(1u64 << exponent).min(MAX_RETRY_DELAY)
}

/// The HTTP client deliveries (and the publish callback) use: https:// with the system's
/// trusted roots. Without roots on the machine only http:// receivers can be reached (said
/// once, at start).
pub fn client() -> reqwest::Client {
    let builder = reqwest::Client::builder()
        .timeout(ATTEMPT_TIMEOUT)
        .user_agent(concat!("Cascade/", env!("CARGO_PKG_VERSION")));
    let builder = match cascade_roles::system_tls::client_config() {
        Ok(tls) => builder.use_preconfigured_tls((*tls).clone()),
        Err(why) => {
            tracing::warn!(%why, "webhooks: https:// receivers cannot be reached");
            builder
        }
    };
    builder.build().unwrap_or_else(|e| {
        tracing::error!(error = %e, "webhooks: the HTTP client could not be built as configured");
        reqwest::Client::new()
    })
}

/// A POST of a JSON `body`, signed when there is a secret.
pub(crate) fn signed_post(
    client: &reqwest::Client,
    url: &str,
    body: Vec<u8>,
    secret: Option<&[u8]>,
) -> reqwest::RequestBuilder {
    let mut request = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json");
    if let Some(secret) = secret {
        let now = cascade_protocol::clock::unix_seconds() as u64;
        request = request.header(signature::HEADER, signature::sign(secret, now, &body));
    }
    request.body(body)
}

pub(super) async fn deliver(
    receiver: Arc<Receiver>,
    outbox: Outbox,
    client: reqwest::Client,
    secret: Option<Vec<u8>>,
) {
    let label = receiver.index.to_string();
    let mut failures: u32 = 0;
    loop {
        let (reading, index) = (outbox.clone(), receiver.index);
        let next = tokio::task::spawn_blocking(move || reading.first(index)).await;
        let next = match next {
            Ok(Ok(found)) => found,
            Ok(Err(e)) => {
                tracing::error!(receiver = receiver.index, error = %e, "webhook outbox unreadable");
                tokio::time::sleep(MAX_RETRY_DELAY).await;
                continue;
            }
            Err(_) => return, // the runtime is shutting down
        };
        let Some((seq, body)) = next else {
            receiver.wake.notified().await;
            continue;
        };
        let outcome = signed_post(&client, &receiver.url, body, secret.as_deref())
            .send()
            .await
            .map_err(|e| describe(&e))
            .and_then(|response| {
                let status = response.status();
                if status.is_success() {
                    Ok(())
                } else {
                    Err(format!("answered {status}"))
                }
            });
        match outcome {
            Ok(()) => {
                let removing = outbox.clone();
                let index = receiver.index;
                let removed =
                    tokio::task::spawn_blocking(move || removing.remove(index, seq)).await;
                match removed {
                    Ok(Ok(())) => {
                        receiver.count_pending(-1);
                    }
                    Ok(Err(e)) => {
                        tracing::error!(receiver = receiver.index, error = %e, "delivered webhook event not removed from the outbox: it will be sent again");
                    }
                    Err(_) => return, // the runtime is shutting down
                }
                metrics::counter!("cascade_webhook_deliveries_total", "receiver" => label.clone(), "result" => "delivered")
                    .increment(1);
                if failures > 0 {
                    tracing::info!(
                        receiver = receiver.index,
                        after_failures = failures,
                        "webhook receiver takes events again"
                    );
                }
                failures = 0;
                let mut deliveries = receiver.deliveries();
                deliveries.delivered += 1;
                deliveries.failing_attempts = 0;
                deliveries.last_error = None;
                deliveries.last_delivered_unix = Some(cascade_protocol::clock::unix_seconds());
            }
            Err(error) => {
                failures += 1;
                metrics::counter!("cascade_webhook_deliveries_total", "receiver" => label.clone(), "result" => "failed")
                    .increment(1);
                let delay = retry_delay(failures);
                // The first failure and then every tenth: a dead receiver is not a log flood.
                if failures == 1 || failures.is_multiple_of(10) {
                    tracing::warn!(
                        receiver = receiver.index,
                        url = %receiver.url,
                        %error,
                        failures,
                        pending = receiver.pending.load(std::sync::atomic::Ordering::Relaxed),
                        retry_in_secs = delay.as_secs(),
                        "webhook delivery failed; retrying"
                    );
                }
                {
                    let mut deliveries = receiver.deliveries();
                    deliveries.failing_attempts = failures;
                    deliveries.last_error = Some(error);
                }
                tokio::time::sleep(delay).await;
            }
        }
    }
}

fn describe(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        format!("no answer within {} s", ATTEMPT_TIMEOUT.as_secs())
    } else if error.is_connect() {
        "cannot connect".into()
    } else {
        error.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_from_one_second_to_half_a_minute() {
        let delays: Vec<u64> = (1..=7).map(|f| retry_delay(f).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(retry_delay(1000), MAX_RETRY_DELAY);
    }
}
