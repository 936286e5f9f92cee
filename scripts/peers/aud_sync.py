#!/usr/bin/env python3
"""The Python peer: what users run today (requests + python-dotenv), doing a no-change pass.

Lists the Access apps filtered by domain, finds the host, compares the AUD with the .env value,
and writes only on a difference (naively, like the old scripts). Used by scripts/bench.sh only.
"""
import os
import sys

import requests
from dotenv import load_dotenv, set_key

load_dotenv(".env")
api = os.environ.get("CLOUDFLARE_API_URL", "https://api.cloudflare.com/client/v4")
token = os.environ["CLOUDFLARE_API_TOKEN"]
account = os.environ["CLOUDFLARE_ACCOUNT_ID"]
domain = os.environ["AUDSYNC_DOMAIN"]
headers = {"Authorization": f"Bearer {token}"}
aud = None
page = 1
while aud is None:
    r = requests.get(f"{api}/accounts/{account}/access/apps", headers=headers, timeout=30,
                     params={"domain": domain, "exact": "true", "page": page, "per_page": 50})
    r.raise_for_status()
    body = r.json()
    if not body.get("success"):
        sys.exit(f"error: {body.get('errors')}")
    for a in body["result"]:
        if a.get("domain") == domain:
            aud = a["aud"]
    info = body.get("result_info") or {}
    if not body["result"] or page >= info.get("total_pages", 1):
        break
    page += 1
if aud is None:
    sys.exit(f"no application for {domain}")
if os.environ.get("CLOUDFLARE_AUD_TAG") != aud:
    set_key(".env", "CLOUDFLARE_AUD_TAG", aud)
    print("changed")
else:
    print("in sync")
