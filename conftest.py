"""Loaded first by every pytest run in this checkout, the packages' doctests included."""

import os

# Before anything imports litellm: it otherwise fetches a price map from the internet, retrying for seconds.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_MODE", "PRODUCTION")  # as `ariel` sets it: no `.env` loaded by litellm's import
