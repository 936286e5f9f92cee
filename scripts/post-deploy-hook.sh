#!/usr/bin/env bash
# Post-deploy hook: after `docker compose up -d` (or after recreating the Access application),
# bring the AUD into the stack's .env and apply it to its containers. Call it from your deploy
# script or CI:
#   scripts/post-deploy-hook.sh /etc/audsync
# It fails the deploy (non-zero exit) when the AUD could not be applied, so you notice.
#
# CONFIG_DIR holds audsync's own configuration, audsync.toml (its [[binding]]s name the
# project's .env and compose service). The Cloudflare token does NOT belong in the project's
# .env: compose's `env_file: .env` hands every line of that file to the app's container. Keep
# it in a file of its own (`token_file` under [cloudflare] in audsync.toml, or
# CLOUDFLARE_API_TOKEN_FILE) or in the deploy environment (CLOUDFLARE_API_TOKEN).
set -euo pipefail
CONFIG_DIR=${1:-/etc/audsync}
cd "$CONFIG_DIR"
# Show what will change (exit 3), then apply.
audsync sync --dry-run || [ $? -eq 3 ]
audsync sync
