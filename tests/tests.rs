//! One integration-test binary (links once); a module per area.

mod support;

mod cli_sync;
mod docker_recover;
mod docker_recreate;
mod docker_restart;
mod docker_rollout;
mod docker_swarm;
mod envfile_prop;
mod infisical;
mod infisical_passes;
mod setup_verify;
mod watch;
