//! `sync` restarting containers on the real Docker engine (gated by AUDSYNC_DOCKER_TESTS=1,
//! which scripts/test.sh sets after checking that the engine answers).
