"""Publish the output folder as a Hub dataset repo with `huggingface_hub`.

`upload_folder` with `delete_patterns` on data/ and curated/ makes a re-push remove the shards of
earlier runs (shard names change with every run), so the repo holds exactly the latest shards.
"""

from __future__ import annotations

import os

from huggingface_hub import HfApi

from backtrans.config import HubConfig
from backtrans.output import CARD_FILE, CURATED_DIR, PLOT_FILE, SUMMARY_FILE, OutputFolder


def hub_token(hub: HubConfig) -> str | None:
    # huggingface_hub would also find a token saved by `hf auth login`; None lets it look.
    return os.environ.get(hub.token_env) or None


def push(folder: OutputFolder, hub: HubConfig) -> str:
    """Create the dataset repo if needed and upload data/, curated/, the card, plot and run summary."""
    api = HfApi(token=hub_token(hub))
    repo = api.create_repo(hub.repo_id, repo_type="dataset", private=hub.private, exist_ok=True)
    api.upload_folder(
        repo_id=hub.repo_id,
        repo_type="dataset",
        folder_path=folder.root,
        allow_patterns=["data/*.parquet", f"{CURATED_DIR}/*/*.parquet", CARD_FILE, PLOT_FILE, SUMMARY_FILE],
        delete_patterns=["data/*", f"{CURATED_DIR}/*"],
        commit_message="Upload instruction backtranslation data (backtrans)",
    )
    return str(repo)
