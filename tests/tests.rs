//! One integration-test binary (links once); a module per area.

mod support;

mod bindings;
mod cli_sync;
mod compose_hash;
mod conform;
mod discover;
mod docker_journal;
mod docker_recover;
mod docker_recreate;
mod docker_restart;
mod docker_rollout;
mod docker_swarm;
mod envfile_prop;
mod exec;
mod faults;
mod help;
mod infisical;
mod infisical_passes;
mod locks;
mod notify;
mod podman;
mod quickstart;
mod setup_verify;
mod trust;
mod units;
mod watch;
mod watch_events;
