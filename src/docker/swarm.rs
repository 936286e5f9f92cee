//! Swarm services (filled in below).
