//! One integration-test binary (links once); a module per area.

mod support;

mod cli_sync;
mod docker_restart;
mod envfile_prop;
mod watch;
