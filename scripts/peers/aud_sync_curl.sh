#!/usr/bin/env bash
# The curl | jq peer: a no-change pass as a shell one-liner would do it (first page only, no
# pagination, no locking, no atomic write). Used by scripts/bench.sh only.
set -euo pipefail
set -a; . ./.env; set +a
aud=$(curl -fsS -H "Authorization: Bearer $CLOUDFLARE_API_TOKEN" \
  "$CLOUDFLARE_API_URL/accounts/$CLOUDFLARE_ACCOUNT_ID/access/apps?domain=$AUDSYNC_DOMAIN&exact=true&per_page=50" \
  | jq -er --arg d "$AUDSYNC_DOMAIN" '.result[] | select(.domain == $d) | .aud')
if [ "$aud" != "${CLOUDFLARE_AUD_TAG:-}" ]; then
  sed -i "s/^CLOUDFLARE_AUD_TAG=.*/CLOUDFLARE_AUD_TAG=$aud/" .env
  echo changed
else
  echo in sync
fi
