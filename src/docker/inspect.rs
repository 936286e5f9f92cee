//! Inspecting one container, the way every module of `docker/` does it.
//!
//! Podman's Docker-compatible API reports `State.Status: "stopped"` for a container whose
//! process ended but which conmon has not cleaned up yet (a fraction of a second later it says
//! `exited`). Docker never says `stopped`, and bollard's model refuses the whole answer
//! (`unknown variant `stopped``): inspecting a new container that just exited would then look
//! like an engine failure. An answer bollard cannot read is therefore asked for again, for a
//! short while, before the error stands. Nothing here decides from an error's text.

use std::time::Duration;

use bollard::Docker;
use bollard::errors::Error as BollardError;
use bollard::models::ContainerInspectResponse;

/// How long an unreadable answer is asked for again (Podman's cleanup takes well under this).
const SETTLE: Duration = Duration::from_secs(3);
const RETRY: Duration = Duration::from_millis(100);

/// `GET /containers/{id}/json`, asked again while the answer does not parse (see the module).
pub(crate) async fn container(
    docker: &Docker,
    id: &str,
) -> Result<ContainerInspectResponse, BollardError> {
    let begin = tokio::time::Instant::now();
    loop {
        match docker.inspect_container(id, None).await {
            Err(e) if unreadable(&e) && begin.elapsed() < SETTLE => {
                tracing::debug!(container = %id, error = %e, "unreadable inspect answer (Podman's transient state?); asking again");
                tokio::time::sleep(RETRY).await;
            }
            other => return other,
        }
    }
}

/// An answer that arrived but does not fit bollard's model.
fn unreadable(e: &BollardError) -> bool {
    matches!(
        e,
        BollardError::JsonDataError { .. } | BollardError::JsonSerdeError { .. }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::sync::{Arc, Mutex};

    /// A fake engine on loopback answering each inspect with the next of `states`.
    fn engine(states: Vec<&'static str>) -> (Docker, Arc<Mutex<usize>>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let asked = Arc::new(Mutex::new(0));
        let count = asked.clone();
        std::thread::spawn(move || {
            for (i, stream) in listener.incoming().enumerate() {
                let Ok(mut s) = stream else { return };
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                *count.lock().unwrap() += 1;
                let state = states[i.min(states.len() - 1)];
                let body = format!(
                    r#"{{"Id":"abc","Name":"/x","State":{{"Status":"{state}","Running":false,"ExitCode":3}}}}"#
                );
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        let docker = Docker::connect_with_http(
            &format!("http://127.0.0.1:{port}"),
            5,
            bollard::API_DEFAULT_VERSION,
        )
        .unwrap();
        (docker, asked)
    }

    #[tokio::test]
    async fn podmans_transient_stopped_state_is_read_again_until_it_settles() {
        let (docker, asked) = engine(vec!["stopped", "stopped", "exited"]);
        let info = container(&docker, "x").await.expect("read once settled");
        assert_eq!(
            info.state.and_then(|s| s.status),
            Some(bollard::models::ContainerStateStatusEnum::EXITED)
        );
        assert_eq!(*asked.lock().unwrap(), 3);
    }

    #[tokio::test]
    async fn an_answer_that_never_parses_is_an_error_after_a_while() {
        let (docker, _) = engine(vec!["stopped"]);
        let begin = std::time::Instant::now();
        let e = container(&docker, "x").await.unwrap_err();
        assert!(unreadable(&e), "{e}");
        assert!(begin.elapsed() >= SETTLE);
    }
}
