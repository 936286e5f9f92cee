#!/usr/bin/env bash
# Post-deploy hook: after `docker compose up -d` (or after recreating the Access application),
# bring the AUD into .env and apply it to lambda-server. Call it from your deploy script or CI:
#   scripts/post-deploy-hook.sh /srv/lambda
# It fails the deploy (non-zero exit) when the AUD could not be applied, so you notice.
set -euo pipefail
PROJECT_DIR=${1:-.}
cd "$PROJECT_DIR"
# Show what will change, then apply. The .env in PROJECT_DIR holds the Cloudflare credentials
# (CLOUDFLARE_API_TOKEN, AUDSYNC_DOMAIN, ...), or they come from the deploy environment.
audsync sync --dry-run || [ $? -eq 3 ]
audsync sync
